"""The native local stack: idempotent `up`, `status`, TimescaleDB features, and clean errors on port conflicts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from clinstream.core.config import Settings
from clinstream.stack.cli import stack_up
from clinstream.stack.common import StackError
from clinstream.stack.kafka import kafka_is_up, kafka_pid
from clinstream.stack.postgres import postgres_is_up, postgres_pid, start_postgres, timescale_edition

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _stack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clinstream.stack.cli", *args], cwd=REPO, capture_output=True,
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
    assert [line.split()[:2] for line in second.stdout.splitlines()] == [["kafka", "running"], ["postgres", "running"]]
    started = time.monotonic()
    stack_up(running_stack)  # the same, in-process: timed without the interpreter's start-up
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"`stack up` of a running stack took {elapsed:.2f} s"
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
    assert "19092" in lines["kafka"] and "15432" in lines["postgres"]
    assert kafka_is_up(running_stack) and postgres_is_up(running_stack)


def test_timescale_edition_is_detected(running_stack: Settings) -> None:
    with psycopg.connect(running_stack.database_url, autocommit=True) as conn:
        assert timescale_edition(conn) in {"apache", "timescale"}
        user = conn.execute("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
        assert user.fetchone() == ("clinstream", False)  # the app role is not a superuser


@pytest.fixture
def scratch_schema(running_stack: Settings) -> Iterator[tuple[psycopg.Connection[tuple[object, ...]], str]]:
    schema = "scratch_" + uuid.uuid4().hex[:10]
    with psycopg.connect(running_stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield conn, schema
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_hypertable_and_time_bucket(scratch_schema: tuple[psycopg.Connection[tuple[object, ...]], str]) -> None:
    conn, schema = scratch_schema
    table = f'"{schema}".hr'
    conn.execute(f"CREATE TABLE {table} (ts timestamptz NOT NULL, subject text NOT NULL, bpm double precision)")
    conn.execute("SELECT create_hypertable(%s::regclass, 'ts', chunk_time_interval => interval '1 day')", (table,))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, 'p1', %s)",
                        [(start + timedelta(minutes=15 * i), 60.0 + i) for i in range(12)])  # 3 hours
    rows = conn.execute(f"SELECT time_bucket('1 hour', ts) AS bucket, count(*), avg(bpm) FROM {table} "
                        "GROUP BY bucket ORDER BY bucket").fetchall()
    assert rows == [(start + timedelta(hours=h), 4, 61.5 + 4 * h) for h in range(3)]
    chunks = conn.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = %s",
                          (schema,)).fetchone()
    assert chunks == (1,)


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
