"""Peer benchmark: the minute heart-rate job built idiomatically in Quix Streams, on clinstream's raw topic.

Runs in its own virtual environment (`.venv-quix`, made by scripts/bench from the `bench-peer` dependency group
of pyproject.toml: Quix Streams pins an older confluent-kafka than clinstream), so it imports no clinstream code.
The job, as a Quix user would write it:

1. read the raw telemetry topic (Avro single-object records) and decode each block with fastavro;
2. per block, per-minute partial sums of the plausible heart-rate samples (n, sum, sum of squares, min, max in
   milli-bpm, numpy; the same fixed-point sums clinstream keeps, so the results are exactly comparable);
3. the keyed HMAC-SHA-256 participant pseudonym (clinstream's key file and MAC input);
4. `group_by` the pseudonym (Quix repartitions through an internal topic);
5. a 1-minute tumbling event-time window with a grace period, `reduce` of the partial sums, `final()`;
6. a `BatchingSink` upserting the window rows in batches (psycopg `executemany`) into a table of the same shape
   as clinstream's `wearable_features`.

`--emit current --since-ms T` is the live variant for latency: rows on every window update, from records produced
after T (the bench posts paced requests through a gateway meanwhile). Stops after `--idle-seconds` without input
(or at SIGTERM) and writes a JSON result: readings and blocks consumed, first consume
and last row write (epoch s), rows written.

    .venv-quix/bin/python scripts/bench_quix.py --bootstrap 127.0.0.1:9092 --topic SITE.telemetry.raw ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from fastavro import schemaless_reader
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBatch

ROOT = Path(__file__).resolve().parents[1]
MINUTE_MS = 60_000
SCALE = 1000  # milli-bpm, as clinstream's partials
HR_MIN_BPM, HR_MAX_BPM = 20.0, 250.0  # clinstream's plausibility bounds (FeatureSettings defaults)
MAGIC = b"\xc3\x01"
LABEL = b"clinstream.pseudonym.v1\x00participant\x00"
HR_BRANCH = "org.clinstream.telemetry.HeartRateSamples"
UPSERT = """
INSERT INTO {table} (participant_pseudonym, feature_set, window_kind, window_start, window_end, utc_offset_minutes,
                     version, feature_values, completeness, is_final, revision, computed_at)
VALUES (%s, 'heart_rate', 'MINUTE', %s, %s, 0, 1, %s, 1.0, true, 1, now())
ON CONFLICT (participant_pseudonym, feature_set, window_kind, window_start, version) DO UPDATE
SET feature_values = EXCLUDED.feature_values, window_end = EXCLUDED.window_end, revision = {table}.revision + 1,
    computed_at = now(), stored_at = now()
"""


class Stats:
    """What the peer consumed and wrote, and when."""

    readings = 0
    blocks = 0
    rows = 0
    first_consume = 0.0
    last_write = 0.0


class Partials:
    """Decodes a raw block and returns its per-minute partial sums, keyed by the participant pseudonym."""

    def __init__(self, key_file: Path) -> None:
        schema = load_schema(str(ROOT / "schemas" / "org.clinstream.telemetry.TelemetryBlock.avsc"))
        self.schema = schema
        self.fingerprint = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))[::-1]
        ring = json.loads(key_file.read_text())
        secret = bytes.fromhex(ring["keys"][str(ring["active"])])
        self.mac = hmac.new(secret, LABEL, hashlib.sha256)

    def __call__(self, raw: bytes) -> list[dict[str, Any]]:
        """Partial sums of one raw block (nothing for other measurements or foreign bytes)."""
        Stats.first_consume = Stats.first_consume or time.time()
        if raw[:2] != MAGIC or raw[2:10] != self.fingerprint:
            return []
        block = schemaless_reader(io.BytesIO(raw[10:]), self.schema, None, return_record_name=True)
        name, body = block["measurement"]
        if name != HR_BRANCH:
            return []
        Stats.blocks += 1
        bpm = np.asarray(body["bpm"], dtype=np.float64)
        Stats.readings += len(bpm)
        start = block["start"]
        start_ms = int(start.timestamp() * 1000) if isinstance(start, dt.datetime) else int(start)
        ok = np.isfinite(bpm) & (bpm >= HR_MIN_BPM) & (bpm <= HR_MAX_BPM)
        if not ok.any():
            return []
        t = (start_ms + np.asarray(body["offsets_ms"], dtype=np.int64)[ok]) // MINUTE_MS * MINUTE_MS
        q = np.rint(bpm[ok] * SCALE).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        n = np.diff(np.r_[starts, len(t)])
        mac = self.mac.copy()
        mac.update(block["participant_id"].encode())
        pseudonym = mac.hexdigest()
        return [{"p": pseudonym, "t": t0, "n": c, "s1": a, "s2": b, "mn": lo, "mx": hi}
                for t0, c, a, b, lo, hi in zip(t[starts].tolist(), n.tolist(), np.add.reduceat(q, starts).tolist(),
                                               np.add.reduceat(q * q, starts).tolist(),
                                               np.minimum.reduceat(q, starts).tolist(),
                                               np.maximum.reduceat(q, starts).tolist(), strict=True)]


def initial(part: dict[str, Any]) -> dict[str, int]:
    """The window accumulator of its first partial."""
    return {k: part[k] for k in ("n", "s1", "s2", "mn", "mx")}


def merge(acc: dict[str, int], part: dict[str, Any]) -> dict[str, int]:
    """Fold one partial into a window accumulator."""
    return {"n": acc["n"] + part["n"], "s1": acc["s1"] + part["s1"], "s2": acc["s2"] + part["s2"],
            "mn": min(acc["mn"], part["mn"]), "mx": max(acc["mx"], part["mx"])}


def feature_values(acc: dict[str, int]) -> dict[str, float]:
    """mean, min, max, sd (ddof=1) and count of a window's sums."""
    n, s1, s2 = acc["n"], acc["s1"], acc["s2"]
    out = {"mean": s1 / (n * SCALE), "min": acc["mn"] / SCALE, "max": acc["mx"] / SCALE, "count": float(n)}
    if n >= 2:
        out["sd"] = float(np.sqrt(max(n * s2 - s1 * s1, 0) / (n * (n - 1)))) / SCALE
    return out


class TimescaleUpsertSink(BatchingSink):
    """Upserts the final window rows of each checkpoint in one executemany (psycopg pipeline mode)."""

    def __init__(self, database_url: str, table: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.sql = UPSERT.format(table=table)
        self.conn: psycopg.Connection[Any] | None = None

    def setup(self) -> None:
        """Connect once."""
        self.conn = psycopg.connect(self.database_url)

    def write(self, batch: SinkBatch) -> None:
        """One transaction per batch."""
        assert self.conn is not None
        rows = []
        for item in batch:
            key = item.key.decode() if isinstance(item.key, bytes) else str(item.key)
            win = item.value
            rows.append((key.strip('"'), dt.datetime.fromtimestamp(win["start"] / 1000, dt.UTC),
                         dt.datetime.fromtimestamp(win["end"] / 1000, dt.UTC),
                         json.dumps(feature_values(win["value"]))))
        with self.conn.cursor() as cur:
            cur.executemany(self.sql, rows)
        self.conn.commit()
        Stats.rows += len(rows)
        Stats.last_write = time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, help="clinstream's raw telemetry topic")
    parser.add_argument("--group", required=True, help="consumer group (also names Quix's internal topics)")
    parser.add_argument("--key-file", type=Path, required=True, help="the site's pseudonym key file")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--table", required=True, help="schema-qualified target table (wearable_features shape)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--grace-ms", type=int, default=60_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="stop after so long without input (0: never)")
    parser.add_argument("--since-ms", type=int, default=0, help="skip raw records produced before this epoch ms")
    parser.add_argument("--emit", choices=("final", "current"), default="final",
                        help="final: a row when the window closes (after the grace); current: on every update")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=str(args.state_dir), commit_interval=1.0, loglevel="WARNING")
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    if args.since_ms:
        since = args.since_ms
        sdf = sdf.filter(lambda _value, _key, ts, _headers: ts >= since, metadata=True)
    sdf = sdf.apply(Partials(args.key_file), expand=True)
    sdf = sdf.group_by(lambda part: part["p"], name="pseudonym")
    sdf = sdf.set_timestamp(lambda part, _key, _ts, _headers: part["t"])
    window = sdf.tumbling_window(duration_ms=MINUTE_MS, grace_ms=args.grace_ms).reduce(merge, initial)
    sdf = window.final() if args.emit == "final" else window.current()
    sdf.sink(TimescaleUpsertSink(args.database_url, args.table))
    app.run(timeout=args.idle_seconds, collect=False)
    args.result.write_text(json.dumps({"readings": Stats.readings, "blocks": Stats.blocks, "rows": Stats.rows,
                                       "first_consume": Stats.first_consume, "last_write": Stats.last_write}))


if __name__ == "__main__":
    main()
