"""`stack up` from any clone location: a 0700 parent moves the cluster; a failed `up` leaves nothing running."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinstream.core.config import Settings
from clinstream_devtools.stack.kafka import kafka_pid
from clinstream_devtools.stack.postgres import OS_USER, cluster_dir, postgres_is_up, postgres_pid

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private_stack_env(data_dir: Path, postgres_port: int) -> dict[str, str]:
    """Environment of a second, private stack on its own ports (not the running one's)."""
    return {"CLINSTREAM_DATA_DIR": str(data_dir), "CLINSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{_free_port()}",
            "CLINSTREAM_KAFKA_CONTROLLER_PORT": str(_free_port()), "CLINSTREAM_POSTGRES_PORT": str(postgres_port),
            "CLINSTREAM_DATABASE_URL": f"postgresql://clinstream@127.0.0.1:{postgres_port}/clinstream"}


def _stack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clinstream_devtools.stack.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200", **env}, check=False)


def _settings(env: dict[str, str]) -> Settings:
    return Settings(data_dir=Path(env["CLINSTREAM_DATA_DIR"]), kafka_bootstrap=env["CLINSTREAM_KAFKA_BOOTSTRAP"],
                    kafka_controller_port=int(env["CLINSTREAM_KAFKA_CONTROLLER_PORT"]),
                    postgres_port=int(env["CLINSTREAM_POSTGRES_PORT"]), database_url=env["CLINSTREAM_DATABASE_URL"])


@pytest.fixture
def private_home(tmp_path: Path) -> Iterator[Path]:
    """A directory like root's home: mode 0700, owned by the test's user, so `postgres` cannot search it."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    yield home


def test_up_from_a_0700_parent_moves_the_cluster_and_says_where(private_home: Path) -> None:
    env = _private_stack_env(private_home / "clone" / ".clinstream", _free_port())
    settings = _settings(env)
    moved_to = cluster_dir(settings)
    try:
        up = _stack("up", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert moved_to != settings.postgres_dir
        assert f"data in {moved_to}" in up.stdout  # the chosen directory is printed
        info = moved_to.stat()
        assert pwd.getpwuid(info.st_uid).pw_name == OS_USER
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert postgres_is_up(settings) and postgres_pid(settings) is not None
        assert not settings.postgres_dir.exists()
        again = _stack("up", env=env)  # the same location is found again: nothing restarted
        assert again.returncode == 0, again.stderr
        assert [line.split()[:2] for line in again.stdout.splitlines() if line.startswith(("kafka", "postgres "))
                and "running" in line] == [["kafka", "running"], ["postgres", "running"]]
    finally:
        down = _stack("down", env=env)
        shutil.rmtree(moved_to, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert kafka_pid(settings) is None


def test_a_failed_up_stops_the_broker_it_had_started(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        taken = int(blocker.getsockname()[1])  # bound, not listening: PostgreSQL cannot have it
        env = _private_stack_env(tmp_path / "data", taken)
        result = _stack("up", env=env)
    settings = _settings(env)
    try:
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error:")
        assert f"port 127.0.0.1:{taken} for PostgreSQL is already in use" in result.stderr
        assert "kafka" in result.stdout and "started" in result.stdout  # the broker had been started ...
        assert kafka_pid(settings) is None  # ... and was stopped again
    finally:
        _stack("down", env=env)


def test_demo_ends_with_one_line_error_when_the_stack_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        env = _private_stack_env(tmp_path / "data", _free_port())
        env["CLINSTREAM_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{blocker.getsockname()[1]}"
        result = subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=300,
                                env={**os.environ, "COLUMNS": "200", **env}, check=False)
    output = result.stdout.strip()
    assert result.returncode != 0
    assert "Traceback" not in output
    assert output.splitlines()[-1].startswith("error: the demo stopped: `clinstream stack up` failed"), output
