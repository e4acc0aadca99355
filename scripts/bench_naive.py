"""The naive baseline: a faust agent per event aggregating one Kafka record per heart-rate reading per minute.

Run by scripts/bench_e2e.py as a child process; parameters come from the environment:
BENCH_NAIVE_TOPIC (input topic, JSON values {"p": participant, "t": epoch ms, "bpm": value}),
BENCH_NAIVE_APP (faust app id), BENCH_NAIVE_EXPECTED (records to process), BENCH_NAIVE_LIMIT_S (time limit after
the first record), BENCH_NAIVE_RESULT (JSON file written at the end), BENCH_NAIVE_DATADIR, BENCH_NAIVE_PARTITIONS,
CLINSTREAM_KAFKA_BOOTSTRAP. It keeps a per-(participant, minute) count and mean in a faust Table (changelog on),
updated once per event, and writes {"processed", "seconds", "readings_per_s"} to the result file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

TOPIC = os.environ.get("BENCH_NAIVE_TOPIC", "bench.naive")
EXPECTED = int(os.environ.get("BENCH_NAIVE_EXPECTED", "0"))
LIMIT_S = float(os.environ.get("BENCH_NAIVE_LIMIT_S", "30"))
RESULT = Path(os.environ.get("BENCH_NAIVE_RESULT", "naive.json"))
BROKER = os.environ.get("CLINSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:19092")

app = faust.App(os.environ.get("BENCH_NAIVE_APP", "bench-naive"), broker=f"kafka://{BROKER}", store="memory://",
                topic_partitions=int(os.environ.get("BENCH_NAIVE_PARTITIONS", "4")), web_enabled=False,
                datadir=os.environ.get("BENCH_NAIVE_DATADIR", "/tmp/bench-naive"))  # noqa: S108 - local bench dir
readings = app.topic(TOPIC, key_type=bytes, value_serializer="json")
minutes = app.Table("hr_minute", default=None, partitions=int(os.environ.get("BENCH_NAIVE_PARTITIONS", "4")))
progress: dict[str, float] = {"processed": 0, "first": 0.0, "last": 0.0}


def _finish() -> None:
    elapsed = max(progress["last"] - progress["first"], 1e-9)
    RESULT.write_text(json.dumps({"processed": int(progress["processed"]), "seconds": elapsed,
                                  "readings_per_s": progress["processed"] / elapsed}))
    sys.stdout.flush()
    os._exit(0)


@app.agent(readings)
async def aggregate(stream: Any) -> None:
    """One event at a time: update the (participant, minute) count and running mean."""
    async for event in stream:
        if not progress["first"]:
            progress["first"] = time.monotonic()
        key = f"{event['p']}|{event['t'] // 60_000}"
        entry = minutes.get(key) or {"count": 0, "mean": 0.0}
        count = entry["count"] + 1
        minutes[key] = {"count": count, "mean": entry["mean"] + (event["bpm"] - entry["mean"]) / count}
        progress["processed"] += 1
        progress["last"] = time.monotonic()
        if progress["processed"] >= EXPECTED:
            _finish()


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def watchdog() -> None:
    """End the run once the time limit after the first record has passed."""
    if progress["first"] and time.monotonic() - progress["first"] >= LIMIT_S:
        _finish()


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
