"""A Flower federation on one machine for the demo and tests: a SuperLink and one SuperNode per site as children.

The command lines, environments and `flwr run` calls are the site runtime's (`clinstream.federated.deployment`);
this module only starts, watches and stops the processes on loopback, each in its own process group with its log
under the work directory.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from clinstream.core import constants as c
from clinstream.federated.config import SiteNodeConfig, report_paths
from clinstream.federated.deployment import (
    LOOPBACK,
    Tls,
    flower_env,
    start_run,
    superlink_command,
    supernode_command,
    wait_run,
    write_connection,
)
from clinstream_devtools.stack.common import port_in_use


def wait_for_port(port: int, timeout_s: float, host: str = LOOPBACK, process: subprocess.Popen[bytes] | None = None,
                  ) -> None:
    """Until something listens on host:port (raises if the process died or after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on port {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class Deployment:
    """One SuperLink and one SuperNode per site as child processes (each its own process group), logs in work_dir."""

    work_dir: Path
    superlink_port: int = c.FLOWER_SUPERLINK_PORT
    clientappio_base_port: int = c.FLOWER_CLIENTAPPIO_BASE_PORT
    tls: Tls = field(default_factory=Tls)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def superlink_address(self) -> str:
        """host:port of the SuperLink."""
        return f"{LOOPBACK}:{self.superlink_port}"

    @property
    def cli_home(self) -> Path:
        """FLWR_HOME of the `flwr` CLI (holds the connection config)."""
        return self.work_dir / "flwr-cli"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(cmd, env=flower_env(self.work_dir / "flwr-home" / name), cwd=self.work_dir,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_superlink(self, timeout_s: float = 60.0) -> None:
        """Start the SuperLink and wait until it listens."""
        if port_in_use(LOOPBACK, self.superlink_port):
            raise RuntimeError(f"port {self.superlink_port} is in use (another SuperLink?)")
        proc = self._spawn("superlink", superlink_command(self.superlink_port, self.tls))
        wait_for_port(self.superlink_port, timeout_s, process=proc)
        write_connection(self.cli_home, self.superlink_address, self.tls)

    def start_supernodes(self, sites: Sequence[SiteNodeConfig], timeout_s: float = 60.0) -> None:
        """Start one SuperNode per site (site i on clientappio_base_port + i) in parallel; wait until all listen."""
        started: list[tuple[int, subprocess.Popen[bytes]]] = []
        for index, site in enumerate(sites):
            port = self.clientappio_base_port + index
            if port_in_use(LOOPBACK, port):
                raise RuntimeError(f"port {port} is in use")
            started.append((port, self._spawn(f"supernode-{site.site_id}",
                                              supernode_command(site, port, self.superlink_address, self.tls))))
        for port, proc in started:
            wait_for_port(port, timeout_s, process=proc)

    def run(self, run_config: dict[str, Any], timeout_s: float = c.FEDERATED_RUN_TIMEOUT_S,
            report_dir: Path | None = None) -> tuple[int, str]:
        """Submit the app with `flwr run`, wait for the end; (run id, final status).

        With `report_dir` (the run's report-dir), the wait watches for the report instead of polling Flower.
        """
        run_id = start_run(self.cli_home, run_config)
        done = report_paths(report_dir, run_id)[0] if report_dir is not None else None
        return run_id, wait_run(self.cli_home, run_id, timeout_s, done_file=done)

    def alive(self) -> dict[str, bool]:
        """Which processes still run."""
        return {name: proc.poll() is None for name, proc in self.processes.items()}

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every started process and its descendants (SuperExec, app processes), SIGKILL after timeout."""
        targets: list[psutil.Process] = []
        for proc in self.processes.values():
            try:
                parent = psutil.Process(proc.pid)
                targets += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for target in targets:
            with contextlib.suppress(psutil.NoSuchProcess):
                target.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(targets, timeout=timeout_s)
        for target in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                target.kill()
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
