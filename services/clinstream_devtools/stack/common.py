"""Helpers shared by the local Kafka and PostgreSQL: the user-facing error, ports, pids, the stack lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from clinstream.core.config import Settings


class StackError(RuntimeError):
    """A missing prerequisite or a conflict; the message is one line that says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    """What `clinstream stack status` shows for one service."""

    name: str
    address: str
    pid: int | None
    answers: bool
    detail: str


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """`host:port` (the first entry of a comma-separated list) as a pair."""
    first = address.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep:
        return first or "127.0.0.1", default_port
    return host.strip("[]") or "127.0.0.1", int(port)


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on, or has bound, host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def process_alive(pid: int | None, *, marker: str) -> bool:
    """True when `pid` runs (not a zombie) and its command line contains `marker` (for pids read from files, which
    may have been reused)."""
    if pid is None or pid <= 0 or not process_exists(pid):
        return False
    try:
        return any(marker in part for part in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def process_exists(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (which it reaps), whatever its command line says."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    _reap(pid)
    return False


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def read_pid(path: Path) -> int | None:
    """The pid in the first line of `path`, or None."""
    try:
        first = path.read_text(encoding="ascii").split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def terminate(pid: int, *, marker: str, timeout_s: float) -> bool:
    """SIGTERM, wait up to `timeout_s` for the exit, then SIGKILL. True if SIGKILL was needed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not process_alive(pid, marker=marker):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not process_alive(pid, marker=marker):
            break
        time.sleep(0.05)
    return True


_LOCK = threading.RLock()
_held: dict[Path, int] = {}


@contextlib.contextmanager
def stack_lock(settings: Settings) -> Iterator[None]:
    """Serialise `up`/`down` of one data dir across processes (e.g. two test runs starting together); re-entrant."""
    data_dir = settings.data_dir.resolve()
    with _LOCK:
        if _held.get(data_dir):
            _held[data_dir] += 1
            try:
                yield
            finally:
                _held[data_dir] -= 1
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        with (data_dir / "stack.lock").open("a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            _held[data_dir] = 1
            try:
                yield
            finally:
                _held[data_dir] = 0
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
