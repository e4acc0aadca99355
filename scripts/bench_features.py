"""Readings per second through the pure feature processor (decode, windows, state, output encoding).

Realistic blocks per participant and minute: one 60-sample 1 Hz heart-rate block, one RR block (~70 beats) and
one step block of a single one-minute interval; participants interleaved as a gateway would deliver them, in
batches of FEATURES_BATCH_MAX records. `--json-state` keeps the state in the worker's table (`FeatureTableState`
over the host's `TableState`: entries serialised, changelog records queued), as the worker does.

    .venv/bin/python scripts/bench_features.py --participants 1000 --minutes 60
"""

from __future__ import annotations

import argparse
import hashlib
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.collector import configure_collector
from clinstream.core.constants import FEATURES_BATCH_MAX
from clinstream.core.records import InRecord
from clinstream.core.stream_host import TableState
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.features.processor import FeatureProcessor
from clinstream.features.worker import FeatureTableState, changelog_order

SITE = "bench"
T0 = 1_767_225_600_000
NS = "org.clinstream.telemetry."


def make_records(participants: int, minutes: int, seed: int = 1) -> tuple[list[InRecord], int]:
    rng = np.random.default_rng(seed)
    codec = get_codec()
    schema = PSEUDO_TELEMETRY.value_schema
    topic = PSEUDO_TELEMETRY.name(SITE)
    people = [hashlib.sha256(f"bench:{i}".encode()).hexdigest() for i in range(participants)]
    devices = [hashlib.sha256(f"bench-dev:{i}".encode()).hexdigest() for i in range(participants)]
    keys = [subject_key(SITE, p) for p in people]
    records: list[InRecord] = []
    readings = 0
    for m in range(minutes):
        for i, (p, d) in enumerate(zip(people, devices, strict=True)):
            start = T0 + m * 60_000
            hr = np.round(65 + rng.normal(0, 5, 60), 1).tolist()
            rr = np.round(rng.normal(850, 50, 70)).tolist()
            bodies = [
                ("HeartRateSamples", {"offsets_ms": list(range(0, 60_000, 1000)), "bpm": hr}),
                ("RRIntervalSamples", {"offsets_ms": np.cumsum(rr).astype(int).tolist(), "rr_ms": rr}),
                ("StepCountSamples", {"offsets_ms": [0], "durations_s": [60], "steps": [int(rng.poisson(50))]}),
            ]
            for j, (name, body) in enumerate(bodies):
                seq = m * 3 + j
                value = codec.encode(schema, {
                    "block_id": str(uuid.UUID(int=(i << 32) | seq)), "site_id": SITE, "participant_pseudonym": p,
                    "device_pseudonym": d, "key_version": 1, "sequence": seq, "start": start,
                    "utc_offset_minutes": 60, "received_at": start + 65_000, "measurement": (NS + name, body)})
                records.append(InRecord(topic, i % 4, len(records), keys[i], value, start + 65_000))
                readings += len(body["offsets_ms"])
    return records, readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--batch", type=int, default=FEATURES_BATCH_MAX)
    parser.add_argument("--json-state", action="store_true", help="serialise state entries like the worker")
    parser.add_argument("--cpython-gc", action="store_true",
                        help="leave CPython's collector as it is instead of `configure_collector` (for comparison)")
    args = parser.parse_args()
    if not args.cpython_gc:
        configure_collector()  # as the worker does when it starts (before the records exist: they are not frozen)
    t = time.perf_counter()
    records, readings = make_records(args.participants, args.minutes)
    print(f"generated {len(records):,} blocks, {readings:,} readings in {time.perf_counter() - t:.1f} s")
    table = TableState(changelog_order)
    state: MutableMapping[str, dict[str, Any]] = FeatureTableState(table) if args.json_state else {}
    proc = FeatureProcessor(SITE, state)
    outputs = 0
    t = time.perf_counter()
    for i in range(0, len(records), args.batch):
        outputs += len(proc.process(records[i:i + args.batch]).out)
        table.take_pending()  # the host produces them to the changelog
    elapsed = time.perf_counter() - t
    print(f"processed in {elapsed:.2f} s: {readings / elapsed:,.0f} readings/s, {len(records) / elapsed:,.0f} "
          f"blocks/s, {outputs:,} feature records ({outputs / elapsed:,.0f}/s); state entries {len(state):,}"
          f"{' (JSON state)' if args.json_state else ''}")


if __name__ == "__main__":
    main()
