"""Replay benchmark: readings/s of `clinstream replay --stage features --version 2` and its speed-up over real time.

Cohort: N participants x H hours of 1 Hz heart rate in B-second blocks (synthetic pseudonyms), produced to a
fresh site's pseudonymised telemetry topic. The replay then runs end to end exactly as the CLI does (own
consumer group, assign(), features processor, store writer into TimescaleDB, checkpoints), and the script
reports records/s, readings/s, how many times faster than real time the cohort is reprocessed (readings/s / N,
since the cohort produces N readings per second) and the CPU seconds per million readings of the replay's processes
(user and system time of this process and its workers during the replay; the broker's and the database's are not
counted). `--workers` (default: the machine's cores) splits the run into processes by partition as
`clinstream replay --workers` does; the wall time counts their start and the merge of their checkpoints. The
site's topics and schema are deleted afterwards unless --keep.

    .venv/bin/python scripts/bench_replay.py --participants 1000 --hours 24
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.collector import configure_collector
from clinstream.core.config import Settings
from clinstream.core.constants import REPLAY_CHECKPOINT_EVERY_S
from clinstream.core.db import connect
from clinstream.core.kafka import DurableProducer
from clinstream.core.stream_host import tool_consumer
from clinstream.core.topic_admin import apply_topics, delete_site_topics
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.replay.engine import Delivery, ReplayEngine, make_adapter
from clinstream.replay.plan import make_plan
from clinstream.replay.specs import SINK
from clinstream.replay.workers import run_in_workers
from clinstream.store.migrate import migrate

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HR = "org.clinstream.telemetry.HeartRateSamples"


def produce_cohort(settings: Settings, participants: int, hours: int, block_s: int, seed: int) -> tuple[int, int]:
    """Produce the cohort's blocks (participant-major per hour, like uploads); returns (blocks, readings)."""
    rng = np.random.default_rng(seed)
    codec = get_codec()
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    site = settings.site_id
    people = [f"{i:064x}" for i in range(1, participants + 1)]
    keys = [subject_key(site, p) for p in people]
    per_block = block_s
    offsets = (np.arange(per_block) * 1000).tolist()
    producer = DurableProducer(settings)
    blocks = readings = 0
    n_blocks = hours * 3600 // block_s
    pending: list[tuple[bytes, bytes, None]] = []
    try:
        for b in range(n_blocks):
            start = T0 + b * block_s * 1000
            bpm = np.round(65 + 10 * np.sin(b / 50 + np.arange(participants))[:, None]
                           + rng.normal(0, 4, (participants, per_block)), 1).tolist()
            records = [{"block_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{p}/{b}")), "site_id": site,
                        "participant_pseudonym": p, "device_pseudonym": p[::-1], "key_version": 1,
                        "sequence": b, "start": start, "utc_offset_minutes": 60,
                        "received_at": start + block_s * 1000 + 5000,
                        "measurement": (HR, {"offsets_ms": offsets, "bpm": bpm[i]})} for i, p in enumerate(people)]
            values = codec.encode_many(PSEUDO_TELEMETRY.value_schema, records)
            pending.extend(zip(keys, values, [None] * len(values), strict=True))
            blocks += len(values)
            readings += len(values) * per_block
            if len(pending) >= 50_000:
                producer.send(topic, pending, 300)
                pending = []
        producer.send(topic, pending, 300)
    finally:
        producer.close()
    return blocks, readings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--block-s", type=int, default=60, help="seconds of 1 Hz heart rate per block")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes, as `clinstream replay --workers` (default: the machine's cores)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the site's topics and schema")
    ap.add_argument("--cpython-gc", action="store_true",
                    help="leave CPython's collector as it is instead of `configure_collector` (for comparison)")
    args = ap.parse_args()

    settings = Settings(site_id="bench" + uuid.uuid4().hex[:6])  # type: ignore[call-arg]
    apply_topics(settings)
    migrate(settings)
    try:
        t0 = time.perf_counter()
        blocks, readings = produce_cohort(settings, args.participants, args.hours, args.block_s, args.seed)
        t_produce = time.perf_counter() - t0
        print(f"cohort: {args.participants} participants x {args.hours} h of 1 Hz heart rate "
              f"({args.block_s}-s blocks): {blocks:,} blocks, {readings:,} readings; produced in {t_produce:.1f} s")
        with TemporaryDirectory() as tmp:
            local = settings.model_copy(update={"data_dir": Path(tmp)})
            consumer = tool_consumer(local, f"clinstream-{local.site_id}-replay-planner")
            stage = make_adapter(local, "features", 2, ())
            try:
                plan = make_plan(consumer, run_id="bench", site_id=local.site_id, stage="features",
                                 topics=stage.input_topics(), version=2, in_place=False)
            finally:
                consumer.close()
            if not args.cpython_gc:
                configure_collector()  # as `clinstream replay` does before it runs (or forks its workers)
            t1, cpu1 = time.perf_counter(), os.times()
            if args.workers > 1:  # as `clinstream replay --workers N` runs it
                plan.workers = args.workers
                outcome = run_in_workers(local, plan, None, batch_max=args.batch_size,
                                         checkpoint_every_s=REPLAY_CHECKPOINT_EVERY_S, max_rate=None,
                                         progress=lambda _n: None, stop=threading.Event())
            else:
                producer = DurableProducer(local)
                assert SINK.sink is not None
                sink = Delivery(local, plan.run_id, producer, SINK.sink(local))
                outcome = ReplayEngine(local, plan, stage, sink, batch_max=args.batch_size).run()
                sink.close()
                producer.close()
            wall, cpu2 = time.perf_counter() - t1, os.times()
        cpu = sum(b - a for a, b in zip(cpu1[:4], cpu2[:4], strict=True))  # user + system, this process and its workers
        c = outcome.checkpoint.counters
        rate = c.get("readings", 0) / wall
        print(f"replay ({args.workers} worker process(es)): {c.get('records_read', 0):,} blocks, "
              f"{c.get('readings', 0):,} readings in {wall:.1f} s "
              f"(incl. {outcome.checkpoint.elapsed_s:.1f} s engine time)")
        print(f"        {c.get('records_read', 0) / wall:,.0f} blocks/s, {rate:,.0f} readings/s; "
              f"{c.get('feature_records_delivered', 0):,} feature records, {c.get('features_written', 0):,} row writes")
        print(f"        {cpu:.1f} CPU-s in the replay's processes (the broker's and the database's not counted): "
              f"{cpu / c.get('readings', 1) * 1e6:.2f} CPU-s per million readings")
        speedup = rate / args.participants
        print(f"        {speedup:,.1f}x faster than real time for {args.participants} participants "
              f"(one day of this cohort replays in {86_400 * args.participants / rate / 60:,.1f} min)")
    finally:
        if not args.keep:
            delete_site_topics(settings)
            with connect(settings, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


if __name__ == "__main__":
    main()
