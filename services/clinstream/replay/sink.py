"""Where a replay's outputs go: feature rows straight into the store, every other record to its topic (acks=all).

Feature and sample-feature records are decoded, validated like the store worker does (`check_feature` /
`check_sample`) and upserted with `StoreWriter` in one transaction per batch, under the store's monotonic
revision rule and erasure filter. Writing them directly rather than through the FEATURES topic keeps a replay
of months out of the live store worker's queue (its lag and the freshness of live features are untouched) and
makes "written" mean committed. Rows the store checks refuse go to the store's DLQ, as the worker would do.

Every other output is produced with `DurableProducer`: dead letters of the replayed stage (with a
`clinstream.replay-run` header naming the run) and, for the pseudonymise stage, the pseudonymised, consent,
erasure and audit records. LATE_TELEMETRY outputs are not re-published: the same bytes are still in the
pseudonymised telemetry topic, which is what a replay with longer horizons reads; they are only counted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from clinstream.core.avro import Codec, DecodeError, get_codec
from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REPLAY_RUN
from clinstream.core.db import TRANSIENT_DB_ERRORS, connect
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import DurableProducer, Header, Message
from clinstream.core.records import BatchResult, OutRecord
from clinstream.core.topics import FEATURES, LATE_TELEMETRY, SAMPLE_FEATURES, Stage, dlq
from clinstream.store.decode import check_feature, check_sample
from clinstream.store.writer import StoreWriter

_DB_RETRY_S = 120.0


class ReplaySink:
    """Delivers one batch's outputs durably; `deliver` returns only when all of them are stored or acked."""

    def __init__(self, settings: Settings, run_id: str, producer: DurableProducer, codec: Codec | None = None) -> None:
        self.settings = settings
        self.run_id = run_id
        self.producer = producer
        self.codec = codec or get_codec()
        site = settings.site_id
        self.features_topic = FEATURES.name(site)
        self.samples_topic = SAMPLE_FEATURES.name(site)
        self.late_topic = LATE_TELEMETRY.name(site)
        self.dlq_topics = {dlq(s).name(site) for s in Stage}
        self.store_dlq = dlq(Stage.STORE).name(site)
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: StoreWriter | None = None

    def close(self) -> None:
        """Close the database connection (the producer belongs to the caller)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def deliver(self, result: BatchResult) -> dict[str, int]:
        """Store feature rows, produce the rest; counters of what happened."""
        counts: dict[str, int] = defaultdict(int)
        wearable: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        topics: dict[str, list[Message]] = defaultdict(list)
        for out in result.out:
            if out.topic in (self.features_topic, self.samples_topic) and out.value:
                self._feature(out, wearable, samples, topics, counts)
            elif out.topic == self.late_topic:
                counts["late_not_republished"] += 1
            elif out.value is not None:
                headers: list[Header] = list(out.headers or [])
                if out.topic in self.dlq_topics:
                    headers.append((HEADER_REPLAY_RUN, self.run_id.encode()))
                    counts["dead_lettered"] += 1
                else:
                    counts["produced"] += 1
                topics[out.topic].append((out.key, out.value, headers or None))
        if wearable or samples:
            written = self._write(wearable, samples)
            counts["features_written"] += written
            counts["features_unchanged"] += len(wearable) + len(samples) - written
        for topic, messages in topics.items():
            self.producer.send(topic, messages, self.settings.produce_timeout_s)
        return dict(counts)

    def _feature(self, out: OutRecord, wearable: list[dict[str, Any]], samples: list[dict[str, Any]],
                 topics: dict[str, list[Message]], counts: dict[str, int]) -> None:
        is_wearable = out.topic == self.features_topic
        assert out.value is not None
        try:
            record = self.codec.decode(out.value)
            problem = (check_feature if is_wearable else check_sample)(record, self.settings.site_id)
        except (DecodeError, KeyError, TypeError) as exc:
            problem = Rejection(f"undecodable feature record ({type(exc).__name__})")
        if problem is not None:
            topics[self.store_dlq].append(dead_letter(
                self.codec, site_id=self.settings.site_id, stage=Stage.STORE, rejection=problem,
                original_value=out.value, original_key=out.key, source_topic=out.topic))
            counts["dead_lettered"] += 1
            return
        (wearable if is_wearable else samples).append(record)
        counts["feature_records"] += 1

    def _write(self, wearable: list[dict[str, Any]], samples: list[dict[str, Any]]) -> int:
        """One transaction; transient database errors are retried on a new connection."""
        for attempt in Retrying(retry=retry_if_exception_type(TRANSIENT_DB_ERRORS), stop=stop_after_delay(_DB_RETRY_S),
                                wait=wait_exponential(multiplier=0.2, max=5.0), reraise=True):
            with attempt:
                try:
                    conn, writer = self._connection()
                    with conn.transaction():
                        res = writer.write(wearable, samples)
                    return res.wearable_written + res.sample_written
                except TRANSIENT_DB_ERRORS:
                    self.close()
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[psycopg.Connection[Any], StoreWriter]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, autocommit=True)
            self._writer = StoreWriter(self._conn)
        assert self._writer is not None
        return self._conn, self._writer
