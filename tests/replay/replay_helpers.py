"""Helpers of the replay tests: a live features host, the store worker in a thread, CLI runs, DB and topic reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.kafka import DurableProducer, make_consumer
from clinstream.core.records import InRecord
from clinstream.core.topics import ERASURE, FEATURES, PSEUDO_BIOBANK, PSEUDO_TELEMETRY
from clinstream.features.config import FeatureSettings
from clinstream.features.processor import FeatureProcessor
from clinstream.store.worker import StoreWorker
from clinstream.store.worker import group_id as store_group
from topic_read import watermarks

CLINSTREAM = Path(sys.executable).with_name("clinstream")


def live_features_group(settings: Settings) -> str:
    """The features stage's live consumer group (the worker's app id)."""
    return f"clinstream-{settings.site_id}-features"



class LiveFeatures:
    """Stand-in for the live features worker: the same processor, the stage's group id, subscribe(), and the
    worker's commit rule (outputs acknowledged before offsets are committed). State survives restart() like
    the worker's changelog-backed table; restart() may change the feature settings (a deployed fix)."""

    def __init__(self, settings: Settings, feature_settings: FeatureSettings | None = None) -> None:
        self.settings = settings
        self.feature_settings = feature_settings or FeatureSettings()
        self.state: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="live-features", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def restart(self, feature_settings: FeatureSettings) -> None:
        self.stop()
        self.feature_settings = feature_settings
        self.start()

    def _run(self) -> None:
        site = self.settings.site_id
        consumer = make_consumer(self.settings, live_features_group(self.settings))
        producer = DurableProducer(self.settings)
        proc = FeatureProcessor(site, self.state, self.feature_settings)
        try:
            consumer.subscribe([PSEUDO_TELEMETRY.name(site), PSEUDO_BIOBANK.name(site), ERASURE.name(site)])
            while not self._stop.is_set():
                msgs = [m for m in consumer.consume(2000, 0.2) if m.error() is None]
                if not msgs:
                    continue
                records = [InRecord(m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value() or b"",
                                    m.timestamp()[1]) for m in msgs]
                result = proc.process(records)
                by_topic: dict[str, list[Any]] = {}
                for out in result.out:
                    by_topic.setdefault(out.topic, []).append((out.key, out.value, out.headers))
                for topic, batch in by_topic.items():
                    producer.send(topic, batch, 30)
                nxt: dict[tuple[str, int], int] = {}
                for r in records:
                    nxt[(r.topic, r.partition)] = max(nxt.get((r.topic, r.partition), 0), r.offset + 1)
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()], asynchronous=False)
        except BaseException as exc:  # surfaced by the tests
            self.error = exc
        finally:
            consumer.close()
            producer.close()


class StoreThread:
    """The real store worker (`StoreWorker`) in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.worker = StoreWorker(settings)
        self.thread = threading.Thread(target=self.worker.run, name="store-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)


def end_offsets(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """High watermarks of every partition of the topics."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "clinstream-test-reader"})
    try:
        out = {}
        for t in topics:
            for p in c.list_topics(t, timeout=10).topics[t].partitions:
                out[(t, p)] = watermarks(c, TopicPartition(t, p))[1]
        return out
    finally:
        c.close()


def committed(settings: Settings, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """A group's committed next offsets (-1001: none) per topic-partition."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in c.list_topics(t, timeout=10).topics[t].partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def caught_up(settings: Settings, group: str, topics: Sequence[str]) -> bool:
    """Whether the group committed everything the topics hold now."""
    done = committed(settings, group, topics)
    return all(hi == 0 or done.get(tp, -1) >= hi for tp, hi in end_offsets(settings, topics).items())


def pipeline_idle(settings: Settings) -> bool:
    """Live features host and store worker have committed all their input."""
    site = settings.site_id
    return (caught_up(settings, live_features_group(settings), [PSEUDO_TELEMETRY.name(site)])
            and caught_up(settings, store_group(settings), [FEATURES.name(site)]))


def key_of(settings: Settings, pseudonym: str) -> bytes:
    return subject_key(settings.site_id, pseudonym)


_ROWS = ("SELECT participant_pseudonym, feature_set, window_kind, window_start, window_end, utc_offset_minutes,"
         " feature_values, completeness, is_final, revision, computed_at{extra} FROM wearable_features"
         " WHERE version = %s ORDER BY 1, 2, 3, 4")


def feature_rows(settings: Settings, version: int, with_stored_at: bool = False) -> list[tuple[Any, ...]]:
    """Every wearable row of a version, without the version (and stored_at unless asked for)."""
    with connect(settings, autocommit=True) as conn:
        sql = _ROWS.format(extra=", stored_at" if with_stored_at else "")
        return [tuple(r) for r in conn.execute(sql, (version,)).fetchall()]  # type: ignore[arg-type]


def scalar(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with connect(settings, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


def cli_env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update({"CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "CLINSTREAM_DATABASE_URL": settings.database_url,
                "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
                "CLINSTREAM_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra})
    return env


def clinstream(settings: Settings, data_dir: Path, *args: str, env: dict[str, str] | None = None,
               timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the `clinstream` CLI for the test site; stdout and stderr captured as text."""
    return subprocess.run([str(CLINSTREAM), *args], env=cli_env(settings, data_dir, **(env or {})),
                          capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)


def clinstream_json(settings: Settings, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    res = clinstream(settings, data_dir, *args, "--json", env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    return json.loads(res.stdout)


def start_clinstream(settings: Settings, data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start the CLI as a background process (output to a log file)."""
    with log.open("ab") as fh:
        return subprocess.Popen([str(CLINSTREAM), *args], env=cli_env(settings, data_dir), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
