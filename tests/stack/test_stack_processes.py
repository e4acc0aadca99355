"""Process checks of the local stack, pure: a started process counts as running until it exits, whatever its
command line says."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from clinstream_devtools.stack.common import process_alive, process_exists


def test_a_started_process_exists_until_it_exits_and_a_zombie_does_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process_exists(child.pid)  # at once: right after a start its command line can read empty
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # now it runs its own code
        assert process_alive(child.pid, marker="sys.stdin.read")
        assert not process_alive(child.pid, marker="no such marker")  # a pid file's check would refuse it
    finally:
        child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # blocks until it has exited; leaves it unreaped
    assert not process_exists(child.pid)  # and reaped by it
    assert not psutil.pid_exists(child.pid)
    assert not process_exists(2**22 + 12345)  # beyond pid_max: no such process
