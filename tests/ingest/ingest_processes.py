"""Helpers of the ingest tests that run real `clinstream gateway` processes (the CLI, as an operator would)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from clinstream.core.config import Settings
from condition_wait import wait_until

CLI = str(Path(sys.executable).with_name("clinstream"))
GATEWAY_START_S = 60.0


def site_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a CLI process of a test site."""
    return {**os.environ, "CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_KAFKA_BOOTSTRAP":
            settings.kafka_bootstrap, "CLINSTREAM_DATABASE_URL": settings.database_url, **extra}


def run_cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `clinstream <args>` for the test site and return its result."""
    return subprocess.run([CLI, *args], env=site_env(settings, **extra), capture_output=True, text=True,
                          timeout=120, check=False)


@contextmanager
def gateway_process(settings: Settings, port: int, *args: str, url: str | None = None,
                    verify: bool | str = True, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `clinstream gateway --port <port>` process, ready (GET /healthz answers) before the body runs."""
    proc = subprocess.Popen([CLI, "gateway", "--port", str(port), "--no-prepare", "--log-level", "warning", *args],
                            env=site_env(settings, **extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = url or f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
        try:
            return httpx.get(f"{base}/healthz", timeout=1.0, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, GATEWAY_START_S, "the gateway to start", step_s=0.1)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process is still there after 15 s."""
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
