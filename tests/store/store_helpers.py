"""Helpers of the store tests: synthetic feature records, the worker as a subprocess, table and offset reads."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.kafka import DurableProducer
from clinstream.core.topics import ERASURE, FEATURES, SAMPLE_FEATURES
from clinstream.store.worker import group_id
from condition_wait import retry_while_raising
from topic_read import read_messages, watermarks

CLINSTREAM = Path(sys.executable).with_name("clinstream")
CODEC = get_codec()
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000
COORDINATOR_WAIT_S = 30.0  # a fresh broker elects the group coordinator within seconds


def pseudonym(n: int) -> str:
    """A synthetic 64-hex pseudonym (hash-like: a run of zeros would be found in any metrics text)."""
    return hashlib.sha256(f"synthetic-participant-{n}".encode()).hexdigest()


def feature(site: str, who: int, minute: int, *, revision: int = 1, is_final: bool = False, version: int = 1,
            mean: float | None = None, feature_set: str = "heart_rate", computed_at: int | None = None,
            window: str = "MINUTE") -> dict[str, Any]:
    """A FeatureRecord of one minute window; the mean encodes the revision unless given."""
    start = BASE_MS + minute * MINUTE_MS
    m = mean if mean is not None else 60.0 + revision + (0.5 if is_final else 0.0)
    return {"site_id": site, "participant_pseudonym": pseudonym(who), "feature_set": feature_set,
            "window": window, "window_start": start, "window_end": start + MINUTE_MS, "utc_offset_minutes": 0,
            "version": version, "values": {"mean": m, "min": m - 5, "max": m + 5, "sd": 2.0, "count": 12.0},
            "completeness": 1.0, "is_final": is_final, "revision": revision,
            "computed_at": computed_at if computed_at is not None else BASE_MS + 10 * 86_400_000}


def sample(site: str, who: int, n: int, *, revision: int = 1, status: str = "available", parent: int | None = 0,
           sample_type: str = "SER", version: int = 1, collected_at: int | None = BASE_MS) -> dict[str, Any]:
    """A SampleFeatureRecord; parent 0 means 'an aliquot of the participant's first sample'."""
    return {"site_id": site, "participant_pseudonym": pseudonym(who), "sample_pseudonym": f"s{who:08d}{n:06d}",
            "parent_sample_pseudonym": None if parent is None else f"s{who:08d}{parent:06d}",
            "sample_type": sample_type, "collected_at": collected_at, "collection_to_centrifugation_min": 42.0,
            "collection_to_freezing_min": 95.0, "sprec": "SER-SST-A-D-N-A-E", "freeze_thaw_count": revision - 1,
            "temperature_excursions": 0, "status": status, "assays": {"1988-5": 3.5}, "version": version,
            "revision": revision, "computed_at": BASE_MS + 86_400_000}


def erasure(site: str, who: int, *, requested_at: int | None = None,
            request_id: str | None = None) -> dict[str, Any]:
    """An ErasureRequest."""
    return {"request_id": request_id or str(uuid.uuid4()), "site_id": site, "participant_pseudonym": pseudonym(who),
            "key_version": 1, "requested_at": requested_at if requested_at is not None else time.time_ns() // 10**6}


def decoded(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record as the worker sees it: through the real codec."""
    return CODEC.decode(CODEC.encode(name, record))


def send(settings: Settings, producer: DurableProducer, spec: Any, records: list[dict[str, Any]],
         raw: list[bytes] | None = None) -> None:
    """Produce records (real codec, SubjectKey keys) and optional raw values to a topic of the site."""
    site = settings.site_id
    msgs: list[tuple[bytes | None, bytes, None]] = []
    for rec, value in zip(records, CODEC.encode_many(spec.value_schema, records), strict=True):
        msgs.append((subject_key(site, rec["participant_pseudonym"]), value, None))
    msgs.extend((subject_key(site, pseudonym(0)), v, None) for v in raw or [])
    producer.send(spec.name(site), msgs, 30)


def rows(settings: Settings, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query in the site's schema."""
    with connect(settings, autocommit=True) as conn:
        return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]


def wearable_state(settings: Settings) -> dict[tuple[Any, ...], tuple[int, bool, float]]:
    """(pseudonym, set, kind, start ms, version) -> (revision, is_final, mean) of every wearable row."""
    out: dict[tuple[Any, ...], tuple[int, bool, float]] = {}
    for r in rows(settings, "SELECT participant_pseudonym, feature_set, window_kind,"
                            " (extract(epoch FROM window_start) * 1000)::bigint, version, revision, is_final,"
                            " (feature_values->>'mean')::float8 FROM wearable_features"):
        out[(r[0], r[1], r[2], int(r[3]), r[4])] = (int(r[5]), bool(r[6]), float(r[7]))
    return out


def expected_state(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, bool, float]]:
    """The monotonic rule computed independently: greatest (revision, is_final) per key, first among equals."""
    out: dict[tuple[Any, ...], tuple[int, bool, float]] = {}
    for r in records:
        key = (r["participant_pseudonym"], r["feature_set"], r["window"], r["window_start"], r["version"])
        cand = (r["revision"], r["is_final"], r["values"]["mean"])
        if key not in out or cand[:2] > out[key][:2]:
            out[key] = cand
    return out



def store_topics(settings: Settings) -> list[str]:
    """The topics the store worker consumes."""
    return [spec.name(settings.site_id) for spec in (FEATURES, SAMPLE_FEATURES, ERASURE)]


def committed_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """The store group's committed next offsets (-1001 = none) per topic-partition."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id(settings),
                  "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in store_topics(settings) for p in range(settings.topic_partitions)]
        # NOT_COORDINATOR while a fresh broker creates its offsets topic: retried, as a client would
        done = retry_while_raising(lambda: c.committed(tps, timeout=10), KafkaException, COORDINATOR_WAIT_S)
        return {(tp.topic, tp.partition): tp.offset for tp in done}
    finally:
        c.close()


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """High watermarks of the store's topics."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "clinstream-test-reader"})
    try:
        out = {}
        for t in store_topics(settings):
            for p in range(settings.topic_partitions):
                out[(t, p)] = watermarks(c, TopicPartition(t, p))[1]
        return out
    finally:
        c.close()


def caught_up(settings: Settings) -> bool:
    """Whether the store group has committed every record of its topics."""
    ends = end_offsets(settings)
    committed = committed_offsets(settings)
    return all(hi == 0 or committed.get(tp, -1) >= hi for tp, hi in ends.items())


def read_all(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[tuple[int, int, bytes]]:
    """Every (partition, offset, value) of a topic up to its current high watermarks."""
    return [(m.partition() or 0, m.offset() or 0, m.value() or b"") for m in read_messages(settings, topic, timeout_s)]


class StoreProcess:
    """`clinstream worker store` as a subprocess; its output goes to a log file."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
        env.update({"CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                    "CLINSTREAM_DATABASE_URL": settings.database_url,
                    "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
                    "CLINSTREAM_DATA_DIR": str(settings.data_dir.resolve()), "CLINSTREAM_LOG_LEVEL": "INFO"})
        self.env = env
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start a worker process."""
        assert self.proc is None or self.proc.poll() is not None
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen([str(CLINSTREAM), "worker", "store"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        """Whether the current process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no commit, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not exit); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_text(self) -> str:
        """Everything the worker wrote."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
