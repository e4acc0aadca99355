"""`clinstream worker store`: the feature store, a Kafka sink from the feature and erasure topics into TimescaleDB.

The store is a sink, not a stream processor: it keeps no state of its own between batches, derives nothing
and produces only dead letters and audit records. It is therefore a plain confluent-kafka consumer loop
rather than a faust app; that also gives exact control over the one thing that matters here, *when* offsets
are committed.

Per batch (up to STORE_BATCH_MAX records or STORE_BATCH_WITHIN_S after the first one):

1. decode and validate (`BatchDecoder`); undecodable or invalid records go to `dlq(Stage.STORE)` with their
   original bytes and a fixed reason (never an identifier);
2. one database transaction (`StoreWriter`): erasures first, then the monotonic upserts. A record the database
   refuses (data or integrity error) is isolated by re-running the batch record by record under savepoints
   and dead-lettered; the rest is stored;
3. dead letters and ERASURE_COMPLETED audit records are produced and acknowledged (acks=all);
4. the batch's offsets are committed synchronously, only now, after the database commit. A crash anywhere
   before leaves the offsets where they were: the batch is redelivered and rewritten idempotently.

Database (or broker) outage: the same batch is retried with tenacity's exponential back-off (capped at
STORE_RETRY_MAX_WAIT_S) without end; nothing is committed meanwhile and nothing is skipped, so the worker
catches up when the database is back. Group membership during the outage: confluent-kafka sends heartbeats
from its background thread, but a consumer that does not poll for `max.poll.interval.ms` (5 min) leaves the
group. We do NOT raise that limit (it is the only way to detect a hung worker). Instead the back-off's sleep
pauses every assigned partition and keeps polling (`_sleep_polling`): a paused consumer fetches nothing, yet
its polls keep it in the group and run rebalance callbacks. Records of partitions revoked during the outage
are dropped from the held batch (their new owner re-reads them from the committed offsets); a record a poll
still returns is kept for the next batch.

On start the worker applies the migrations (idempotent), stores the feature catalogue, and reports the
TimescaleDB edition once; on 'apache' the community features (continuous aggregates, compression) are
skipped by the migration runner, on 'timescale' the schema's continuous aggregates are refreshed after each
erasure so an erased participant's rollups go too.

Log lines carry counts, partitions and timings only: never keys, values or pseudonyms.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from clinstream.core.avro import Codec, get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import (
    STORE_BATCH_MAX,
    STORE_BATCH_WITHIN_S,
    STORE_ID_NAMESPACE,
    STORE_PAUSED_POLL_S,
    STORE_RETRY_MAX_WAIT_S,
    STORE_STATS_EVERY_S,
    WORKER_SESSION_TIMEOUT_S,
)
from clinstream.core.db import connect
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import BrokerUnavailable, DurableProducer, Message, make_consumer
from clinstream.core.logging import configure_logging
from clinstream.core.metrics_endpoint import serve_metrics
from clinstream.core.records import InRecord, from_kafka_message
from clinstream.core.stage_metrics import observe_store_batch
from clinstream.core.timeutil import to_ms
from clinstream.core.topics import AUDIT, Stage, dlq
from clinstream.store.catalogue_sync import sync_catalogue
from clinstream.store.decode import ERASE, SAMPLE, WEARABLE, BatchDecoder, DecodedBatch, Item, records_of
from clinstream.store.migrate import migrate
from clinstream.store.writer import (
    ErasureOutcome,
    StoreWriter,
    WriteResult,
    continuous_aggregates,
    refresh_continuous_aggregates,
)

STAGE = Stage.STORE
log = logging.getLogger("clinstream.store.worker")
T = TypeVar("T")
_NS = uuid.UUID(STORE_ID_NAMESPACE)
_RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def group_id(settings: Settings) -> str:
    """Consumer group of the store worker of a site."""
    return f"clinstream-{settings.site_id}-{STAGE.value}"


def erasure_audit_id(request_id: uuid.UUID) -> str:
    """Deterministic id of the ERASURE_COMPLETED audit record of an erasure request."""
    return str(uuid.uuid5(_NS, f"{request_id}/ERASURE_COMPLETED"))


class _Stopping(Exception):
    """Shutdown was requested while waiting: leave without committing the held batch."""


def _retryable(exc: BaseException) -> bool:
    # Record-level errors are handled by isolation inside the attempt; everything else (database or broker
    # away, or a deployment error such as a missing table) is retried: skipping would lose data.
    return isinstance(exc, psycopg.Error | BrokerUnavailable) and not isinstance(exc, _RECORD_ERRORS)


@dataclass(slots=True)
class _Outcome:
    result: WriteResult
    rejected: list[tuple[InRecord, Rejection]]


class StoreWorker:
    """The store's consume -> write -> commit loop for one site."""

    def __init__(self, settings: Settings, *, batch_max: int = STORE_BATCH_MAX,
                 batch_within_s: float = STORE_BATCH_WITHIN_S, codec: Codec | None = None) -> None:
        self.settings = settings
        self.batch_max = batch_max
        self.batch_within_s = batch_within_s
        self.codec = codec or get_codec()
        self.decoder = BatchDecoder(self.codec, settings.site_id)
        self.dlq_topic = dlq(STAGE).name(settings.site_id)
        self.audit_topic = AUDIT.name(settings.site_id)
        self.edition = "unknown"
        self.stats: dict[str, int] = {}
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: StoreWriter | None = None
        self._consumer: Consumer | None = None
        self._producer: DurableProducer | None = None
        self._carry: list[InRecord] = []
        self._revoked: set[tuple[str, int]] = set()
        self._paused = False
        self._outage_since: float | None = None
        self._caggs: list[str] = []
        self._last_stats = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    def run(self) -> None:
        """Start up, then consume until `stop`; the held batch is never committed on the way out."""
        try:
            self._retrying(self._startup, "start-up")
            consumer = make_consumer(self.settings, group_id(self.settings),
                                     **{"session.timeout.ms": int(WORKER_SESSION_TIMEOUT_S * 1000)})
            self._consumer = consumer
            self._producer = DurableProducer(self.settings)
            consumer.subscribe(self.decoder.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info("store worker for site %s consuming %d topics as group %s (batch %d / %.0f ms)",
                     self.settings.site_id, len(self.decoder.topics), group_id(self.settings), self.batch_max,
                     self.batch_within_s * 1000)
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self.handle(batch)
                self._log_stats()
        except _Stopping:
            log.info("stopping during back-off; the held batch stays uncommitted and will be redelivered")
        finally:
            self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed: %s", type(exc).__name__)
        if self._producer is not None:
            self._producer.close()
        self._drop_connection()
        log.info("store worker stopped: %s", self._stats_line())

    def _startup(self) -> None:
        report = migrate(self.settings)
        self.edition = report.edition
        conn = self._connection()
        with conn.transaction():
            changed = sync_catalogue(conn)
        if self.edition == "timescale":
            self._caggs = continuous_aggregates(conn)
            log.info("TimescaleDB edition: timescale; community features in use (continuous aggregates: %d)",
                     len(self._caggs))
        else:
            log.info("TimescaleDB edition: %s; community features (continuous aggregates, compression, "
                     "retention) skipped: %s", self.edition, ", ".join(report.skipped_community) or "none")
        log.info("schema %s ready (%d migrations applied now); feature catalogue: %s", report.schema,
                 len(report.applied), "module not available" if changed is None else f"{changed} rows changed")

    # ---- database connection ----------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, autocommit=True)
            self._writer = StoreWriter(self._conn)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._writer = None

    # ---- consumption ------------------------------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._revoked |= gone
        before = len(self._carry)
        self._carry = [r for r in self._carry if (r.topic, r.partition) not in gone]
        log.info("revoked %d partitions; dropped %d held records (their new owner re-reads them)", len(gone),
                 before - len(self._carry))

    def _take(self, msgs: Sequence[KafkaMessage]) -> None:
        for msg in msgs:
            err = msg.error()
            if err is not None:
                log.warning("consumer error: %s", err.str() if hasattr(err, "str") else err)
                continue
            self._carry.append(from_kafka_message(msg))

    def _collect(self) -> list[InRecord]:
        """Up to batch_max records, waiting at most batch_within_s after the first one (0.5 s when idle)."""
        assert self._consumer is not None
        if not self._carry:  # idle: `poll` returns with the first record (`consume` would wait out its timeout)
            msg = self._consumer.poll(0.5)
            if msg is None:
                return []
            self._take([msg])
        deadline = time.monotonic() + self.batch_within_s
        while len(self._carry) < self.batch_max and not self._stop.is_set():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            self._take(self._consumer.consume(num_messages=self.batch_max - len(self._carry), timeout=timeout))
        batch, self._carry = self._carry[:self.batch_max], self._carry[self.batch_max:]
        self._revoked.clear()
        return batch

    # ---- back-off that keeps the consumer in its group --------------------------------------------------
    def _sleep_polling(self, seconds: float) -> None:
        consumer = self._consumer
        if consumer is None:  # start-up: nothing to keep alive yet
            if self._stop.wait(seconds):
                raise _Stopping
            return
        if not self._paused:
            consumer.pause(consumer.assignment())
            self._paused = True
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                raise _Stopping
            msg = consumer.poll(min(STORE_PAUSED_POLL_S, left))
            if msg is not None and msg.error() is None:
                self._carry.append(from_kafka_message(msg))  # fetched before the pause took effect: keep it

    def _before_sleep(self, what: str) -> Callable[[RetryCallState], None]:
        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            name = type(exc).__name__ if exc else "?"
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("%s failed (%s): holding the batch, offsets uncommitted, retrying with back-off",
                            what, name)
            elif state.attempt_number % 10 == 0:
                log.warning("%s still failing after %d attempts (%s)", what, state.attempt_number, name)
            if isinstance(exc, psycopg.Error):
                self._drop_connection()
        return note

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        retrying = Retrying(retry=retry_if_exception(_retryable),
                            wait=wait_exponential(multiplier=0.1, max=STORE_RETRY_MAX_WAIT_S),
                            sleep=self._sleep_polling, before_sleep=self._before_sleep(what), reraise=True)
        value = retrying(fn)
        if self._outage_since is not None:
            log.warning("%s succeeded again after %.1f s; catching up", what, time.monotonic() - self._outage_since)
            self._outage_since = None
        if self._paused and self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        return value

    # ---- one batch --------------------------------------------------------------------------------------
    def handle(self, batch: Sequence[InRecord]) -> None:
        """Decode, write in one transaction, produce dead letters and audit records, then commit offsets."""
        started = time.perf_counter()
        decoded = self.decoder.decode(batch)
        outcome = self._retrying(lambda: self._write(decoded), "database write")
        held = self._live(decoded.items)
        rejected = [(r, why) for r, why in [*decoded.rejected, *outcome.rejected] if self._is_live(r)]
        if outcome.result.erasures and self._caggs:
            self._refresh_rollups()
        messages = [dead_letter(self.codec, site_id=self.settings.site_id, stage=STAGE, rejection=why,
                                original_value=r.value, original_key=r.key, source_topic=r.topic,
                                source_partition=r.partition, source_offset=r.offset)
                    for r, why in rejected]
        audits = self._audit_records(outcome.result.erasures)
        self._retrying(lambda: self._produce(messages, audits), "dead-letter/audit produce")
        self._commit([i.source for i in held] + [r for r, _ in rejected])
        res = outcome.result
        for name, n in (("records", len(batch)), ("batches", 1), ("wearable_written", res.wearable_written),
                        ("sample_written", res.sample_written), ("unchanged", res.unchanged),
                        ("dead_lettered", len(messages)), ("erasures", len(res.erasures))):
            self.stats[name] = self.stats.get(name, 0) + n
        rows = {"wearable": res.wearable_written, "sample": res.sample_written, "unchanged": res.unchanged,
                "coalesced": res.coalesced}
        observe_store_batch(len(batch), time.perf_counter() - started, rows, len(res.erasures),
                            [why.reason for _, why in rejected])

    def _is_live(self, rec: InRecord) -> bool:
        return (rec.topic, rec.partition) not in self._revoked

    def _live(self, items: Sequence[Item]) -> list[Item]:
        return [i for i in items if self._is_live(i.source)]

    def _write(self, decoded: DecodedBatch) -> _Outcome:
        """One attempt: the whole batch in one transaction; on a record-level error, record by record."""
        items = self._live(decoded.items)
        conn = self._connection()
        writer = self._writer
        assert writer is not None
        try:
            with conn.transaction():
                result = writer.write(records_of([i for i in items if i.kind == WEARABLE]),
                                      records_of([i for i in items if i.kind == SAMPLE]),
                                      records_of([i for i in items if i.kind == ERASE]))
            return _Outcome(result, [])
        except _RECORD_ERRORS as exc:
            log.warning("the database refused a record of the batch (%s): isolating it", exc.sqlstate)
        return self._write_isolating(conn, writer, items)

    @staticmethod
    def _write_isolating(conn: psycopg.Connection[Any], writer: StoreWriter, items: Sequence[Item]) -> _Outcome:
        total = WriteResult()
        rejected: list[tuple[InRecord, Rejection]] = []
        ordered = sorted(items, key=lambda i: i.kind != ERASE)  # erasures first, as in the batch write
        with conn.transaction():
            for item in ordered:
                try:
                    with conn.transaction():
                        one = writer.write(*([item.record] if item.kind == k else [] for k in (WEARABLE, SAMPLE,
                                                                                               ERASE)))
                except _RECORD_ERRORS as exc:
                    rejected.append((item.source, Rejection(f"refused by the feature store ({exc.sqlstate})")))
                    continue
                total.wearable_in += one.wearable_in
                total.wearable_written += one.wearable_written
                total.sample_in += one.sample_in
                total.sample_written += one.sample_written
                total.erasures.extend(one.erasures)
        return _Outcome(total, rejected)

    def _refresh_rollups(self) -> None:
        try:
            refresh_continuous_aggregates(self._connection(), self._caggs)
        except psycopg.Error as exc:  # the refresh policy catches up; the raw rows are already gone
            log.warning("refreshing continuous aggregates after an erasure failed (%s)", type(exc).__name__)
            self._drop_connection()

    def _audit_records(self, erasures: Sequence[ErasureOutcome]) -> list[Message]:
        out: list[Message] = []
        for e in erasures:
            pseudonym = e.request.participant_pseudonym
            value = self.codec.encode(AUDIT.value_schema, {
                "audit_id": erasure_audit_id(e.request.request_id), "site_id": self.settings.site_id,
                "participant_pseudonym": pseudonym, "action": "ERASURE_COMPLETED", "at": to_ms(e.completed_at)})
            out.append((subject_key(self.settings.site_id, pseudonym), value, None))
        return out

    def _produce(self, dead: Sequence[Message], audits: Sequence[Message]) -> None:
        assert self._producer is not None
        timeout = self.settings.produce_timeout_s
        self._producer.send(self.dlq_topic, dead, timeout)
        self._producer.send(self.audit_topic, audits, timeout)

    def _commit(self, records: Sequence[InRecord]) -> None:
        """Synchronously commit the next offset of every partition in the batch (after the DB commit)."""
        assert self._consumer is not None
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        nxt: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            if key in owned:  # a partition revoked meanwhile is its new owner's to commit
                nxt[key] = max(nxt.get(key, 0), r.offset + 1)
        if not nxt:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: the batch is redelivered and rewritten idempotently
            log.warning("offset commit failed (%s); the batch will be redelivered", exc.args[0] if exc.args else exc)

    # ---- reporting --------------------------------------------------------------------------------------
    def _stats_line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())) or "nothing consumed"

    def _log_stats(self) -> None:
        if time.monotonic() - self._last_stats >= STORE_STATS_EVERY_S:
            self._last_stats = time.monotonic()
            log.info("progress: %s", self._stats_line())


def run(settings: Settings) -> None:
    """Run the store worker until SIGTERM/SIGINT."""
    configure_logging(STAGE.value)
    serve_metrics(STAGE.value)
    worker = StoreWorker(settings)

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    worker.run()
