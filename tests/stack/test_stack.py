"""The native local stack: idempotent `up`, `status`, TimescaleDB features, and clean errors on port conflicts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from clinstream.core.config import Settings
from clinstream_devtools.stack.cli import stack_up
from clinstream_devtools.stack.common import StackError
from clinstream_devtools.stack.kafka import kafka_is_up, kafka_pid
from clinstream_devtools.stack.postgres import postgres_is_up, postgres_pid, start_postgres, timescale_edition

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _stack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clinstream_devtools.stack.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "COLUMNS": "160", **(env or {})}, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stack_settings() -> Settings:
    """Settings of the stack as the CLI sees it from the repo root (default data dir `.clinstream`)."""
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        settings = Settings()
        return settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def running_stack(stack_settings: Settings) -> Settings:
    first = _stack("up")
    assert first.returncode == 0, first.stderr
    return stack_settings


def test_up_twice_is_idempotent_and_fast(running_stack: Settings) -> None:
    pids = (kafka_pid(running_stack), postgres_pid(running_stack))
    properties = (running_stack.kafka_dir / "server.properties").read_text()
    second = _stack("up")
    assert second.returncode == 0, second.stderr
    states = [line.split()[:2] for line in second.stdout.splitlines() if " data in " not in line]  # not the cluster
    assert states == [["kafka", "running"], ["postgres", "running"]]  # location note printed from a 0700 clone
    stack_up(running_stack)  # the same, in-process
    assert (kafka_pid(running_stack), postgres_pid(running_stack)) == pids  # nothing was restarted
    assert None not in pids
    assert (running_stack.kafka_dir / "server.properties").read_text() == properties


def test_status_reports_both_up(running_stack: Settings) -> None:
    result = _stack("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.split()[1:2] in (["kafka"],
                                                                                                    ["postgres"])}
    assert set(lines) == {"kafka", "postgres"}
    assert all(" yes " in line for line in lines.values())
    assert running_stack.kafka_bootstrap in lines["kafka"]
    assert f"127.0.0.1:{running_stack.postgres_port}" in lines["postgres"]
    assert kafka_is_up(running_stack) and postgres_is_up(running_stack)


def test_timescale_edition_is_detected(running_stack: Settings) -> None:
    with psycopg.connect(running_stack.database_url, autocommit=True) as conn:
        assert timescale_edition(conn) in {"apache", "timescale"}
        user = conn.execute("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
        assert user.fetchone() == ("clinstream", False)  # the app role is not a superuser


def test_the_cluster_runs_with_the_settings_up_wrote(running_stack: Settings) -> None:
    """`stack up` configured the server (clinstream.conf) and installed TimescaleDB in the app database."""
    with psycopg.connect(host="127.0.0.1", port=running_stack.postgres_port, user="postgres",
                         dbname=conninfo_to_dict(running_stack.database_url)["dbname"], autocommit=True) as conn:
        shown = {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                 for name in ("listen_addresses", "port", "timezone", "shared_preload_libraries", "fsync",
                              "synchronous_commit", "timescaledb.telemetry_level", "unix_socket_permissions")}
        extension = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert shown == {"listen_addresses": "127.0.0.1", "port": str(running_stack.postgres_port), "timezone": "UTC",
                     "shared_preload_libraries": "timescaledb", "fsync": "on", "synchronous_commit": "on",
                     "timescaledb.telemetry_level": "off", "unix_socket_permissions": "0700"}
    assert extension == ("timescaledb",)


def test_port_taken_gives_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {"CLINSTREAM_DATA_DIR": str(tmp_path / "data"), "CLINSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
               "CLINSTREAM_KAFKA_CONTROLLER_PORT": str(_free_port()), "CLINSTREAM_POSTGRES_PORT": str(_free_port())}
        result = _stack("up", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"port 127.0.0.1:{port}" in message and "already in use" in message
    assert not (tmp_path / "data" / "kafka").exists()  # nothing was written or started


def test_postgres_port_taken_raises_stack_error(tmp_path: Path, stack_settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]  # bound, not listening: still taken
        settings = stack_settings.model_copy(update={"data_dir": tmp_path / "data", "postgres_port": port})
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} for PostgreSQL is already in use"):
            start_postgres(settings)
    assert not (tmp_path / "data" / "postgres").exists()
