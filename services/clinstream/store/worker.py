"""`clinstream worker store`: the feature store, a sink stage from the feature and erasure topics into TimescaleDB.

The store is a sink, not a stream processor: it keeps no state of its own between batches, derives nothing and
produces only dead letters and audit records. `StoreSink` is therefore hosted by the core host's confluent-kafka
group member (`clinstream.core.stream_host.GroupHost`), in the host's one checkpoint order:

1. process: decode and validate (`BatchDecoder`); undecodable or invalid records become dead letters
   (`dlq(Stage.STORE)`, original bytes, a fixed reason, never an identifier); then one database transaction
   (`StoreWriter`): erasures first, then the monotonic upserts. A record the database refuses (data or integrity
   error) is isolated by re-running the batch record by record under savepoints and dead-lettered; the rest is
   stored. The database commit is this stage's durable effect;
2. the dead letters and ERASURE_COMPLETED audit records are produced and acknowledged (acks=all);
3. (no state);
4. the batch's offsets are committed synchronously. A crash anywhere before leaves the offsets where they were:
   the batch is redelivered and rewritten idempotently.

Database (or broker) outage: the host retries the same batch with exponential back-off (capped at
STORE_RETRY_MAX_WAIT_S) without end, its consumer paused but polling (group membership); records of partitions
revoked meanwhile are left to their new owner. A replay writes its feature records through the same
`StoreSink.process` (the store stage's replay adapter), so "written" means committed under the same checks.

On start the sink applies the migrations (idempotent), stores the feature catalogue, and reports the
TimescaleDB edition once; on 'apache' the community features (continuous aggregates, compression) are
skipped by the migration runner, on 'timescale' the schema's continuous aggregates are refreshed after each
erasure so an erased participant's rollups go too.

Log lines carry counts, partitions and timings only: never keys, values or pseudonyms.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from clinstream.core.avro import Codec, get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import STORE_BATCH_MAX, STORE_BATCH_WITHIN_S, STORE_ID_NAMESPACE
from clinstream.core.db import connect
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import BrokerUnavailable
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.stage_metrics import observe_store_batch
from clinstream.core.stream_host import GroupHost, StageTraits, app_id, run_sink
from clinstream.core.timeutil import to_ms
from clinstream.core.topics import AUDIT, Stage, dlq
from clinstream.store.catalogue_sync import sync_catalogue
from clinstream.store.decode import ERASE, SAMPLE, WEARABLE, BatchDecoder, Item, records_of
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
_NS = uuid.UUID(STORE_ID_NAMESPACE)
_RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def group_id(settings: Settings) -> str:
    """Consumer group of the store worker of a site."""
    return app_id(settings, STAGE.value)


def erasure_audit_id(request_id: uuid.UUID) -> str:
    """Deterministic id of the ERASURE_COMPLETED audit record of an erasure request."""
    return str(uuid.uuid5(_NS, f"{request_id}/ERASURE_COMPLETED"))


def transient(exc: BaseException) -> bool:
    """Database or broker away (or a deployment error such as a missing table): retried, since skipping would
    lose data. Record-level errors are handled by isolation inside the write."""
    return isinstance(exc, psycopg.Error | BrokerUnavailable) and not isinstance(exc, _RECORD_ERRORS)


@dataclass(slots=True)
class _Outcome:
    result: WriteResult
    rejected: list[tuple[InRecord, Rejection]]


class StoreSink:
    """The store stage as the host sees it: decode, write in one transaction, dead letters and audit records out."""

    traits = StageTraits(name=STAGE.value, table_name="", table_help="", batch_max=STORE_BATCH_MAX,
                         batch_within_s=STORE_BATCH_WITHIN_S)

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or get_codec()
        self.decoder = BatchDecoder(self.codec, settings.site_id)
        self.dlq_topic = dlq(STAGE).name(settings.site_id)
        self.audit_topic = AUDIT.name(settings.site_id)
        self.edition = "unknown"
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: StoreWriter | None = None
        self._caggs: list[str] = []
        self._reasons: list[str] = []
        self._rows: dict[str, int] = {}

    @property
    def input_topics(self) -> Sequence[str]:
        """FEATURES, SAMPLE_FEATURES and ERASURE of the site."""
        return self.decoder.topics

    def transient(self, exc: BaseException) -> bool:
        """See `transient`."""
        return transient(exc)

    def start(self) -> None:
        """Migrate, store the catalogue, report the TimescaleDB edition."""
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

    def close(self) -> None:
        """Close the database connection."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._writer = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, autocommit=True)
            self._writer = StoreWriter(self._conn)
        return self._conn

    # ---- one batch --------------------------------------------------------------------------------------
    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Decode and write (committed when this returns); the dead letters and audit records to produce."""
        decoded = self.decoder.decode(records)
        try:
            outcome = self._write(decoded.items)
        except psycopg.Error as exc:
            if transient(exc):
                self.close()  # the retry starts on a new connection
            raise
        rejected = [*decoded.rejected, *outcome.rejected]
        res = outcome.result
        if res.erasures and self._caggs:
            self._refresh_rollups()
        result = BatchResult()
        for r, why in rejected:
            key, value, headers = dead_letter(
                self.codec, site_id=self.settings.site_id, stage=STAGE, rejection=why,
                original_value=self.decoder.original_bytes(r), original_key=r.key, source_topic=r.topic,
                source_partition=r.partition if r.offset >= 0 else None,
                source_offset=r.offset if r.offset >= 0 else None)
            result.out.append(OutRecord(self.dlq_topic, key, value, headers))
        result.out.extend(self._audit_records(res.erasures))
        for name, n in (("feature_rows", res.wearable_in + res.sample_in),
                        ("wearable_written", res.wearable_written), ("sample_written", res.sample_written),
                        ("unchanged", res.unchanged), ("coalesced", res.coalesced), ("dead_lettered", len(rejected)),
                        ("erasures", len(res.erasures))):
            result.count(name, n)
        self._reasons = [why.reason for _, why in rejected]
        return result

    def report(self, result: BatchResult, records: int, seconds: float) -> None:
        """Count the batch in the store's metrics (rows by kind, erasures, dead letters by reason)."""
        c = result.counters
        rows = {"wearable": c.get("wearable_written", 0), "sample": c.get("sample_written", 0),
                "unchanged": c.get("unchanged", 0), "coalesced": c.get("coalesced", 0)}
        observe_store_batch(records, seconds, rows, c.get("erasures", 0), self._reasons)

    def _write(self, items: Sequence[Item]) -> _Outcome:
        """One attempt: the whole batch in one transaction; on a record-level error, record by record."""
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
            self.close()

    def _audit_records(self, erasures: Sequence[ErasureOutcome]) -> list[OutRecord]:
        out: list[OutRecord] = []
        for e in erasures:
            pseudonym = e.request.participant_pseudonym
            value = self.codec.encode(AUDIT.value_schema, {
                "audit_id": erasure_audit_id(e.request.request_id), "site_id": self.settings.site_id,
                "participant_pseudonym": pseudonym, "action": "ERASURE_COMPLETED", "at": to_ms(e.completed_at)})
            out.append(OutRecord(self.audit_topic, subject_key(self.settings.site_id, pseudonym), value))
        return out


class StoreWorker(GroupHost):
    """The store sink on the core host (a group member of `clinstream-<site>-store`)."""

    def __init__(self, settings: Settings, *, batch_max: int = STORE_BATCH_MAX,
                 batch_within_s: float = STORE_BATCH_WITHIN_S, codec: Codec | None = None) -> None:
        super().__init__(settings, StoreSink(settings, codec), batch_max=batch_max, batch_within_s=batch_within_s)


def run(settings: Settings) -> None:
    """Run the store worker until SIGTERM/SIGINT."""
    run_sink(settings, StoreSink(settings))
