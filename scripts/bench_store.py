"""Benchmark of the feature store: rows/s of the writer alone, and through `clinstream worker store` from Kafka.

Usage: .venv/bin/python scripts/bench_store.py [--rows 100000] [--batch 5000]
Needs the local stack (`clinstream stack up`). Uses a throw-away site (topics and schema removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.kafka import DurableProducer
from clinstream.core.topic_admin import apply_topics, delete_site_topics
from clinstream.core.topics import FEATURES
from clinstream.store.migrate import migrate
from clinstream.store.writer import StoreWriter

BASE_MS = 1_767_225_600_000
SETS = ("heart_rate", "hrv", "steps", "spo2", "skin_temperature")


def records(site: str, n: int, revision: int = 1) -> list[dict[str, Any]]:
    """n distinct minute windows over 50 participants and 5 feature sets."""
    out = []
    for i in range(n):
        who, rest = divmod(i, n // 50 + 1)
        fs, minute = SETS[rest % len(SETS)], rest // len(SETS)
        start = BASE_MS + minute * 60_000
        out.append({"site_id": site, "participant_pseudonym": f"{who:064x}", "feature_set": fs, "window": "MINUTE",
                    "window_start": start, "window_end": start + 60_000, "utc_offset_minutes": 0, "version": 1,
                    "values": {"mean": 70.0 + i % 13, "min": 60.0, "max": 90.0, "sd": 4.2, "count": 12.0},
                    "completeness": 0.9, "is_final": False, "revision": revision, "computed_at": BASE_MS})
    return out


def count(settings: Settings) -> int:
    with connect(settings, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM wearable_features").fetchone()
    return int(row[0]) if row else 0


def bench_writer(settings: Settings, n: int, batch: int) -> None:
    """The writer alone: rows/s, and CPU per row of this process (building rows, COPY) and of its PostgreSQL
    backend (staging, upsert), for new rows, the same rows finalised (is_final, same revision: what every window's
    row gets once) and a replay of the final rows (no change)."""
    codec = get_codec()
    encoded = codec.encode_many(FEATURES.value_schema, records(settings.site_id, n))
    t = time.perf_counter()
    decoded = [codec.decode_plain(v) for v in encoded]  # as the store worker decodes them
    t_decode = time.perf_counter() - t
    print(f"decode (Avro -> dict):            {n / t_decode:>10,.0f} records/s")
    final = [dict(r, is_final=True) for r in decoded]
    with connect(settings, autocommit=True) as conn:
        writer = StoreWriter(conn)
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = psutil.Process(int(row[0]))
        for label, recs in (("insert (new rows)", decoded), ("finalise (is_final, same revision)", final),
                            ("replay (duplicates, no change)", final)):
            t, cpu, pg = time.perf_counter(), time.process_time(), sum(backend.cpu_times()[:2])
            written = 0
            for lo in range(0, n, batch):
                with conn.transaction():
                    written += writer.write(recs[lo:lo + batch]).wearable_written
            dt = time.perf_counter() - t
            client_us = (time.process_time() - cpu) / n * 1e6
            pg_us = (sum(backend.cpu_times()[:2]) - pg) / n * 1e6
            print(f"writer {label:<35} {n / dt:>10,.0f} rows/s  ({written} rows changed, batches of {batch}); "
                  f"CPU per row: writer {client_us:.1f} us, PostgreSQL backend {pg_us:.1f} us")
    assert count(settings) == n


def bench_worker(settings: Settings, n: int) -> None:
    codec = get_codec()
    producer = DurableProducer(settings)
    recs = records(settings.site_id, n)
    topic = FEATURES.name(settings.site_id)
    values = codec.encode_many(FEATURES.value_schema, recs)
    msgs = [(subject_key(settings.site_id, r["participant_pseudonym"]), v, None) for r, v in zip(recs, values,
                                                                                                 strict=True)]
    for lo in range(0, n, 20_000):
        producer.send(topic, msgs[lo:lo + 20_000], 60)
    producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update({"CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_LOG_LEVEL": "WARNING",
                "CLINSTREAM_DATA_DIR": str(settings.data_dir.resolve())})
    clinstream = Path(sys.executable).with_name("clinstream")
    t_start = time.perf_counter()
    proc = subprocess.Popen([str(clinstream), "worker", "store"], env=env, stdin=subprocess.DEVNULL)
    try:
        first_at, first = None, 0
        deadline = time.monotonic() + 300
        while (c := count(settings)) < n:
            if first_at is None and c > 0:
                first_at, first = time.perf_counter(), c
            if time.monotonic() > deadline:
                raise SystemExit(f"worker stored only {c} of {n} rows")
            time.sleep(0.05)
        done = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    assert first_at is not None
    print(f"worker Kafka -> TimescaleDB:      {(n - first) / (done - first_at):>10,.0f} rows/s steady state "
          f"({n} rows; {done - t_start:.1f} s including a {first_at - t_start:.1f} s start-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    runs: tuple[tuple[str, Callable[[Settings], None]], ...] = (
        ("writer", lambda s: bench_writer(s, args.rows, args.batch)), ("worker", lambda s: bench_worker(s, args.rows)))
    for label, fn in runs:
        settings = Settings(site_id="bench" + uuid.uuid4().hex[:8])  # type: ignore[call-arg]
        if label == "worker":
            apply_topics(settings)
        migrate(settings)
        try:
            fn(settings)
        finally:
            with connect(settings, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
            if label == "worker":
                delete_site_topics(settings)


if __name__ == "__main__":
    main()
