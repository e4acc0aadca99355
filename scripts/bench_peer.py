"""Runs the Quix Streams peer (scripts/bench_quix.py) on a bench site's raw topic; checks its rows against ours.

The peer lives in its own virtual environment, `.venv-quix`, made on first use from the `bench-peer` dependency
group of pyproject.toml (Quix Streams pins confluent-kafka < 2.13; clinstream pins 2.16). Its CPU seconds are the
orchestrator's reaped-children rusage around the run; Kafka's and PostgreSQL's come from the caller's sampler.
"""

from __future__ import annotations

import datetime as dt
import resource
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import psutil

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import RAW_TELEMETRY

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-quix"
PEER_TABLE = "bench_quix_peer"
LIVE_TABLE = "bench_quix_peer_live"
VALUES = ("mean", "min", "max", "sd", "count")
# Same key and values as the peer writes: MINUTE heart-rate rows of the site's active feature version.
CLINSTREAM_ROWS = ("SELECT participant_pseudonym, window_start, feature_values FROM wearable_features "
                   "WHERE feature_set = 'heart_rate' AND window_kind = 'MINUTE' AND window_start >= %s")
PEER_ROWS = f"SELECT participant_pseudonym, window_start, feature_values FROM {PEER_TABLE}"


def ensure_venv() -> Path:
    """The peer's Python, installing `.venv-quix` from the bench-peer dependency group when missing."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *groups["bench-peer"]], check=True)
    return python


def prepare_table(settings: Settings, name: str = PEER_TABLE) -> str:
    """A table shaped like wearable_features (hypertable too) in the site's schema; its qualified name."""
    with connect(settings, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} (LIKE wearable_features INCLUDING ALL)")
        conn.execute("SELECT create_hypertable(%s, 'window_start', chunk_time_interval => interval '7 days')",
                     (f"{settings.db_schema}.{name}",))
    return f'"{settings.db_schema}".{name}'


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peer_command(settings: Settings, log_dir: Path, name: str, table: str, *extra: str) -> list[str]:
    """The peer's command line: its own consumer group and state directory named `name`."""
    python = ensure_venv()
    state_dir = log_dir / f"{name}-state"
    shutil.rmtree(state_dir, ignore_errors=True)
    key_file = settings.pseudonym_key_file
    assert key_file is not None
    return [str(python), str(ROOT / "scripts" / "bench_quix.py"), "--bootstrap", settings.kafka_bootstrap,
            "--topic", RAW_TELEMETRY.name(settings.site_id), "--group", f"{settings.site_id}-{name}",
            "--key-file", str(key_file), "--database-url", settings.database_url, "--table", table,
            "--state-dir", str(state_dir), "--result", str(log_dir / f"{name}-result.json"), *extra]


def start_live(settings: Settings, log_dir: Path, since_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    """The live peer (rows on every window update) on records produced from `since_ms`; (process, group)."""
    cmd = peer_command(settings, log_dir, "bench-quix-live", prepare_table(settings, LIVE_TABLE),
                       "--emit", "current", "--since-ms", str(since_ms), "--idle-seconds", "0")
    log = (log_dir / "quix-live.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"{settings.site_id}-bench-quix-live"


def stop_live(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """SIGTERM (Quix stops gracefully: commits, closes the sink), SIGKILL after `timeout_s`."""
    proc.terminate()
    _, alive = psutil.wait_procs([psutil.Process(proc.pid)], timeout=timeout_s)
    for rest in alive:
        rest.kill()


def run_peer(settings: Settings, log_dir: Path, idle_s: float = 6.0, grace_ms: int = 60_000) -> dict[str, Any]:
    """Run the peer until it has been idle `idle_s` seconds; its counts, timing and CPU seconds."""
    cmd = peer_command(settings, log_dir, "bench-quix", prepare_table(settings), "--grace-ms", str(grace_ms),
                       "--idle-seconds", str(idle_s))
    result_path = log_dir / "bench-quix-result.json"
    cpu0 = _children_cpu()
    with (log_dir / "quix.log").open("wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=1800, check=False)
    cpu_s = _children_cpu() - cpu0
    if proc.returncode != 0 or not result_path.exists():
        tail = (log_dir / "quix.log").read_text(errors="replace")[-2000:]
        return {"error": f"exit {proc.returncode}", "log_tail": tail, "cpu_s": round(cpu_s, 2)}
    out: dict[str, Any] = orjson.loads(result_path.read_bytes())
    seconds = max(out["last_write"] - out["first_consume"], 1e-9)
    out.update({"cpu_s": round(cpu_s, 2), "seconds": round(seconds, 3),
                "readings_per_s": round(out["readings"] / seconds)})
    return out


def compare(settings: Settings, since_ms: int) -> dict[str, Any]:
    """The peer's final minute rows against clinstream's: same keys, same values (1e-9 relative)."""
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    with connect(settings, autocommit=True) as conn:
        ours = {(p, w): v for p, w, v in conn.execute(CLINSTREAM_ROWS, (since,))}
        peer = {(p, w): v for p, w, v in conn.execute(PEER_ROWS)}
    mismatched = []
    for key, theirs in peer.items():
        mine = ours.get(key)
        if mine is None or any(not _close(mine.get(name), theirs.get(name)) for name in VALUES):
            mismatched.append((key[0][:12], key[1].isoformat(), mine, theirs))
    return {"peer_rows": len(peer), "clinstream_rows": len(ours), "mismatched": len(mismatched),
            "examples": mismatched[:3], "not_final_in_peer": len(ours.keys() - peer.keys()),
            "peer_only": len(peer.keys() - ours.keys()),
            "equal": bool(peer) and not mismatched}


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
