"""Benchmark of the pseudonymise stage: readings/s through the pure processor, and optionally the real worker.

    .venv/bin/python scripts/bench_pseudonymise.py                 # processor only (no services needed)
    .venv/bin/python scripts/bench_pseudonymise.py --worker        # also end-to-end through Kafka + the worker

The processor figure is single-threaded, on pre-encoded batches: decode, pseudonymise, consent check, encode.
The worker figure is wall time from starting a worker on a pre-filled raw topic until every block is in the
pseudonymised topic (start-up excluded: timed from the first output record).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.kafka import DurableProducer
from clinstream.core.records import InRecord
from clinstream.core.topics import PSEUDO_TELEMETRY, RAW_BIOBANK, RAW_TELEMETRY
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import KeyRing, init_key_file
from clinstream.pseudonymise.processor import PseudonymiseProcessor

T0 = 1_767_225_600_000
HR = "org.clinstream.telemetry.HeartRateSamples"
ACC = "org.clinstream.telemetry.AccelerationSamples"


def raw_block(site: str, pid: str, seq: int, n: int, kind: str) -> dict[str, Any]:
    if kind == HR:
        m: dict[str, Any] = {"offsets_ms": [i * 1000 for i in range(n)], "bpm": [60.0 + i % 40 for i in range(n)]}
    else:
        m = {"offsets_ms": [i * 40 for i in range(n)], "x": [0.01 * (i % 7) for i in range(n)],
             "y": [0.2] * n, "z": [0.98] * n}
    return {"block_id": str(uuid.uuid4()), "site_id": site, "participant_id": pid, "device_id": f"SN-BENCH-{pid}",
            "sequence": seq, "start": T0 + seq * 300_000, "utc_offset_minutes": 60,
            "received_at": T0 + seq * 300_000 + 5000, "measurement": (kind, m)}


def raw_grant(site: str, pid: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "site_id": site, "participant_id": pid, "occurred_at": T0,
            "recorded_at": T0, "operator_name": None, "operator_role": None, "comment": None,
            "payload": ("org.clinstream.biobank.ConsentEvent", {
                "action": "GRANT", "status": "ACTIVE", "scope": ["DUO:0000042"], "participant_name": None,
                "birth_date": None, "postcode": None})}


def bench_processor(blocks: int, readings: int, kind: str, verify: bool, participants: int = 50) -> float:
    codec = get_codec()
    site = "bench"
    tel, bio = RAW_TELEMETRY.name(site), RAW_BIOBANK.name(site)
    pids = [f"P-{i:06d}" for i in range(participants)]
    grants = [InRecord(bio, 0, i, subject_key(site, p), codec.encode(RAW_BIOBANK.value_schema, raw_grant(site, p)), 1)
              for i, p in enumerate(pids)]
    values = codec.encode_many(RAW_TELEMETRY.value_schema,
                               (raw_block(site, pids[i % participants], i, readings, kind) for i in range(blocks)))
    recs = [InRecord(tel, 0, i, subject_key(site, pids[i % participants]), v, 2) for i, v in enumerate(values)]
    state: dict[str, ConsentEntry] = {}
    proc = PseudonymiseProcessor(site, KeyRing(1, {1: secrets.token_bytes(32)}), state, verify_measurements=verify)
    proc.process(grants)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, len(recs), 2000):
            result = proc.process(recs[i:i + 2000])
            assert result.counters.get("forwarded_telemetry") == len(recs[i:i + 2000])
        best = min(best, time.perf_counter() - t)
    return blocks * readings / best


def _count(settings: Settings, topic: str) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-reader"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += hi - lo
        return total
    finally:
        c.close()


def bench_worker(blocks: int, readings: int, kind: str) -> tuple[float, float]:
    from clinstream.core.topic_admin import admin_client, apply_topics, delete_site_topics

    settings = Settings(site_id="bench" + uuid.uuid4().hex[:6])  # type: ignore[call-arg]
    site = settings.site_id
    tmp = Path(tempfile.mkdtemp(prefix="bench-pseudo-"))
    key_file = tmp / "keys.json"
    init_key_file(key_file)
    apply_topics(settings)
    producer = DurableProducer(settings)
    pids = [f"P-{i:06d}" for i in range(50)]
    codec = get_codec()
    producer.send(RAW_BIOBANK.name(site), [(subject_key(site, p), codec.encode(RAW_BIOBANK.value_schema,
                                                                             raw_grant(site, p)), None)
                                           for p in pids], 30)
    time.sleep(0.2)
    for start in range(0, blocks, 2000):
        chunk = [raw_block(site, pids[i % 50], i, readings, kind) for i in range(start, min(blocks, start + 2000))]
        producer.send(RAW_TELEMETRY.name(site), [
            (subject_key(site, b["participant_id"]), v, None)
            for b, v in zip(chunk, codec.encode_many(RAW_TELEMETRY.value_schema, chunk), strict=True)], 60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update({"CLINSTREAM_SITE_ID": site, "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "CLINSTREAM_PSEUDONYM_KEY_FILE": str(key_file), "CLINSTREAM_DATA_DIR": str(tmp / "data"),
                "CLINSTREAM_LOG_LEVEL": "WARNING"})
    log = (tmp / "worker.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("clinstream")), "worker", "pseudonymise"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    out_topic = PSEUDO_TELEMETRY.name(site)
    try:
        t_first = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n = _count(settings, out_topic)
            if n and t_first is None:
                t_first, n_first = time.monotonic(), n
            if n >= blocks:
                break
            time.sleep(0.1)
        t_end = time.monotonic()
        if t_first is None or n < blocks:
            raise RuntimeError(f"worker did not finish: {n} of {blocks}")
        elapsed = max(t_end - t_first, 1e-6)
        return (blocks - n_first) * readings / elapsed, (blocks - n_first) / elapsed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        delete_site_topics(settings)
        admin = admin_client(settings)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"clinstream-{site}-")]
        if names:
            for fut in admin.delete_topics(names).values():
                fut.result(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=300, help="readings per block")
    parser.add_argument("--worker", action="store_true", help="also run end-to-end through Kafka and the worker")
    args = parser.parse_args()
    for kind, label in ((HR, "heart rate (2 arrays)"), (ACC, "acceleration (4 arrays)")):
        for verify in (True, False):
            rate = bench_processor(args.blocks, args.readings, kind, verify)
            print(f"processor  {label:24s} verify_measurements={verify!s:5s}  "
                  f"{rate / 1e6:7.2f} M readings/s  ({rate / args.readings:9.0f} blocks/s)")
    if args.worker:
        rate, bps = bench_worker(args.blocks, args.readings, HR)
        print(f"worker     heart rate via Kafka + worker  {rate / 1e6:7.2f} M readings/s  ({bps:9.0f} blocks/s)")


if __name__ == "__main__":
    main()
