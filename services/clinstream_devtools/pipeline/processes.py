"""Starts, stops, kills and restarts the processes of one site's pipeline (gateway and workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from clinstream.core.config import Settings

# Each service and the `clinstream` arguments that run it, in data-flow order.
SERVICES: dict[str, tuple[str, ...]] = {
    "gateway": ("gateway",),
    "pseudonymise": ("worker", "pseudonymise"),
    "features": ("worker", "features"),
    "store": ("worker", "store"),
}


def site_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a site's process: this process's, with the site's CLINSTREAM_* settings."""
    env = dict(os.environ)
    env.update({
        "CLINSTREAM_SITE_ID": settings.site_id,
        "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLINSTREAM_DATABASE_URL": settings.database_url,
        "CLINSTREAM_DATA_DIR": str(settings.data_dir),
        "CLINSTREAM_GATEWAY_HOST": settings.gateway_host,
        "CLINSTREAM_GATEWAY_PORT": str(settings.gateway_port),
        "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "PYTHONUNBUFFERED": "1",
    })
    if settings.pseudonym_key_file is not None:
        env["CLINSTREAM_PSEUDONYM_KEY_FILE"] = str(settings.pseudonym_key_file)
    if extra:
        env.update(extra)
    return env


@dataclass
class ServiceProcess:
    """One running service of the pipeline."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started_at: float = field(default_factory=time.monotonic)


class SitePipeline:
    """The gateway and workers of one site as child processes, each logging to its own file."""

    def __init__(self, settings: Settings, services: Iterable[str] = SERVICES,
                 extra_env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.services = tuple(services)
        self.extra_env = dict(extra_env or {})
        self.log_dir = log_dir or settings.data_dir.resolve() / "logs" / settings.site_id
        self.procs: dict[str, ServiceProcess] = {}

    def start(self, name: str | None = None) -> None:
        """Start one service, or every service not yet running."""
        for svc in [name] if name else list(self.services):
            if svc in self.procs and self.procs[svc].popen.poll() is None:
                continue
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{svc}.log"
            log_file = log_path.open("ab")
            popen = subprocess.Popen(
                [sys.executable, "-m", "clinstream", *SERVICES[svc]],
                env=site_env(self.settings, self.extra_env), stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs[svc] = ServiceProcess(svc, popen, log_path, log_file)

    def alive(self, name: str) -> bool:
        """Whether a service's process is running."""
        proc = self.procs.get(name)
        return proc is not None and proc.popen.poll() is None

    def pid(self, name: str) -> int:
        """Process id of a running service."""
        return self.procs[name].popen.pid

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 15.0) -> int | None:
        """Send a signal to a service and wait for it to exit; returns its exit code."""
        proc = self.procs.get(name)
        if proc is None or proc.popen.poll() is not None:
            return proc.popen.returncode if proc else None
        proc.popen.send_signal(sig)
        try:
            return proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return proc.popen.wait(timeout_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every service (SIGTERM, then SIGKILL) in reverse data-flow order."""
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM, timeout_s)
            self.procs[name].log_file.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the gateway answers 200 on /readyz (TimeoutError otherwise, with the log's tail)."""
        import httpx

        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive("gateway"):
                raise RuntimeError(f"the gateway exited: {self.log_text('gateway')[-2000:]}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the gateway was not ready within {timeout_s:.0f} s: {self.log_text('gateway')[-2000:]}")

    def log_text(self, name: str) -> str:
        """Everything a service has logged so far."""
        return self.procs[name].log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> SitePipeline:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
