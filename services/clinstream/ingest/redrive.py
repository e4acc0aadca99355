"""Re-driving ingest dead letters: the gateway's current validation, then the raw records it would produce now.

A telemetry block is re-validated with the gateway's `TelemetryValidator` and the current `IngestSettings`
(CLINSTREAM_INGEST_*), as the device and at the receipt instant recorded on the dead letter (see
`dlq_context`), after the gateway's binding check (the block's participant must be the one the device's
credential is bound to). A block that passes is encoded as the gateway encodes it: same key, same bytes (the
receipt instant is the original one, so every re-drive of a block gives the same record and downstream
deduplication by block_id holds); only the `clinstream.redriven-from` header is added.

A LIMS event (JSON or a CSV row) is re-validated with `BiobankValidator` and goes through the gateway's
idempotency: an event id that the event-id ledger (`ingest_event_ids`) or this run already holds with the same
content is already in the stream (nothing is sent; the dead letter counts as done), with other content it
stays in the DLQ as a conflict; a new one is produced, and recorded in the ledger once the broker
acknowledged it (`delivered`), as the gateway does.

Dead letters without the request context (written before it existed), and blocks the gateway rejected as a
duplicate of another block of the same request, stay in the DLQ with a reason saying so.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Any
from uuid import UUID

import orjson
import psycopg

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.dead_letters import DeadLetterRecord, Verdict, redriven_header
from clinstream.core.dlq import Rejection
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY
from clinstream.ingest.biobank_intake import EVENT_ID_CONFLICT
from clinstream.ingest.biobank_validate import BiobankValidator, RejectedEvent
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.csv_import import row_to_event
from clinstream.ingest.dlq_context import TELEMETRY, IngestContext, read_context
from clinstream.ingest.telemetry_intake import DUPLICATE_IN_REQUEST
from clinstream.ingest.telemetry_validate import RejectedBlock, TelemetryValidator

log = logging.getLogger("clinstream.ingest")

NO_CONTEXT = "no request context on the dead letter (written before re-drive support): cannot be re-driven"
FOREIGN_PARTICIPANT = "the block names a participant other than the one the device is registered for"
LEDGER_UNAVAILABLE = "the gateway's event-id ledger is unavailable; the event stays for the next re-drive"
UNREADABLE = "the original bytes are not a JSON object"
_PREFIX = re.compile(r"^((?:blocks|events|rows)\[(\d+)\])")


def item_prefix(field_path: str | None, default: str) -> tuple[str, int]:
    """The request item a field path points into (`blocks[3]`, `rows[17]`...) and its index."""
    found = _PREFIX.match(field_path or "")
    if not found:
        return default, 0
    return found.group(1), int(found.group(2))


def csv_event(original: bytes) -> dict[str, Any]:
    """The event of a CSV dead letter (its header line and row line), as `csv_import.read_rows` maps it."""
    lines = list(csv.reader(io.StringIO(original.decode("utf-8"), newline="")))
    if len(lines) != 2:
        raise ValueError("a CSV dead letter holds a header line and one row")
    header, values = lines
    names = [h.strip() for h in header]
    cells = dict(zip(names, values, strict=False))
    if len(values) > len(names):
        cells["__extra__"] = ",".join(values[len(names):])
    return row_to_event(cells)


class EventLedger:
    """The gateway's LIMS event-id ledger (`ingest_event_ids`), synchronously, for re-drives."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, autocommit=True)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def known(self, event_id: str) -> bytes | None:
        """The content hash an event id was accepted with, if it was; psycopg.Error if the DB is away."""
        try:
            row = self._connection().execute("SELECT content_sha256 FROM ingest_event_ids WHERE event_id = %s",
                                              (UUID(event_id),)).fetchone()
        except psycopg.Error:
            self._drop()
            raise
        return bytes(row[0]) if row else None

    def record(self, events: list[tuple[str, bytes, str]]) -> None:
        """Remember acknowledged events (event id, content hash, LIMS key id); a known id keeps its first record."""
        if not events:
            return
        try:
            with self._connection().cursor() as cur:
                cur.executemany("INSERT INTO ingest_event_ids (event_id, content_sha256, lims_key_id)"
                                " VALUES (%s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                                [(UUID(e), digest, key) for e, digest, key in events])
        except psycopg.Error:
            self._drop()
            raise

    def close(self) -> None:
        """Close the connection, if one was opened."""
        self._drop()


class IngestRedriver:
    """Judges ingest dead letters with the gateway's current validators; see the module doc."""

    def __init__(self, settings: Settings, limits: IngestSettings | None = None,
                 ledger: EventLedger | None = None) -> None:
        site = settings.site_id
        self.site_id = site
        self.limits = limits if limits is not None else IngestSettings()
        self.telemetry = TelemetryValidator(self.limits, site)
        self.biobank = BiobankValidator(self.limits, site)
        self.ledger = ledger if ledger is not None else EventLedger(settings)
        self.codec = get_codec()
        self.raw_telemetry = RAW_TELEMETRY.name(site)
        self.raw_biobank = RAW_BIOBANK.name(site)
        self._blocks: dict[str, bytes] = {}  # block id -> value handed back in this run
        self._events: dict[str, bytes] = {}  # event id -> content hash handed back in this run
        self._unrecorded: list[tuple[str, bytes, str]] = []  # handed back, not yet in the ledger

    def judge(self, rec: DeadLetterRecord) -> Verdict:
        """Re-validate the dead letter's original bytes as the gateway would now."""
        if rec.envelope is None:
            return Verdict(rejection=Rejection("unreadable dead-letter envelope"))
        ctx = read_context(rec.headers)
        if ctx is None:
            return Verdict(rejection=Rejection(NO_CONTEXT))
        if ctx.endpoint == TELEMETRY:
            return self._telemetry(rec, ctx)
        return self._biobank(rec, ctx)

    def delivered(self) -> None:
        """The events handed back so far were acknowledged by the broker: record them in the ledger."""
        events, self._unrecorded = self._unrecorded, []
        try:
            self.ledger.record(events)
        except psycopg.Error:  # the events are durable; a resend by the LIMS would only add a harmless duplicate
            log.warning("re-driven LIMS events could not be recorded for idempotency (database unavailable)")

    def close(self) -> None:
        """Release the ledger's connection."""
        self.ledger.close()

    def _telemetry(self, rec: DeadLetterRecord, ctx: IngestContext) -> Verdict:
        assert ctx.device_id is not None and ctx.participant_id is not None
        prefix, index = item_prefix(rec.field_path, "blocks[0]")
        if rec.reason == DUPLICATE_IN_REQUEST:  # a block with its id was accepted from the same request
            return Verdict(rejection=Rejection(DUPLICATE_IN_REQUEST, rec.field_path))
        try:
            raw = orjson.loads(rec.original_value)
        except orjson.JSONDecodeError:
            return Verdict(rejection=Rejection(UNREADABLE, prefix))
        if not isinstance(raw, dict):
            return Verdict(rejection=Rejection(UNREADABLE, prefix))
        claimed = raw.get("participant_id")
        if isinstance(claimed, str) and claimed != ctx.participant_id:  # the gateway answers 403 to this
            return Verdict(rejection=Rejection(FOREIGN_PARTICIPANT, f"{prefix}.participant_id"))
        result = self.telemetry.validate(index, raw, device_id=ctx.device_id, received_ms=ctx.received_ms)
        if isinstance(result, RejectedBlock):
            return Verdict(rejection=result.rejection)
        try:
            value = self.codec.encode(RAW_TELEMETRY.value_schema, result.record)
        except Exception as exc:  # as the gateway: a validated block that Avro refuses stays dead-lettered
            return Verdict(rejection=Rejection(f"not encodable as TelemetryBlock ({type(exc).__name__})", prefix))
        if self._blocks.get(result.block_id) == value:  # the same block dead-lettered twice: hand it back once
            return Verdict(duplicate=True)
        self._blocks[result.block_id] = value
        key = subject_key(self.site_id, ctx.participant_id)
        return Verdict([(self.raw_telemetry, (key, value, [redriven_header(rec)]))])

    def _biobank(self, rec: DeadLetterRecord, ctx: IngestContext) -> Verdict:
        assert ctx.lims_key_id is not None
        csv_row = (rec.envelope or {}).get("content_type") == "text/csv"
        prefix, index = item_prefix(rec.field_path, "rows[0]" if csv_row else "events[0]")
        try:
            raw: Any = csv_event(rec.original_value) if csv_row else orjson.loads(rec.original_value)
        except (ValueError, csv.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return Verdict(rejection=Rejection(UNREADABLE, prefix))
        result = self.biobank.validate(index, raw, received_ms=ctx.received_ms, original=rec.original_value,
                                       prefix=prefix)
        if isinstance(result, RejectedEvent):
            return Verdict(rejection=result.rejection)
        conflict = Rejection(EVENT_ID_CONFLICT, f"{prefix}.event_id")
        earlier = self._events.get(result.event_id)
        if earlier is None:
            try:
                earlier = self.ledger.known(result.event_id)
            except psycopg.Error:
                return Verdict(rejection=Rejection(LEDGER_UNAVAILABLE))
        if earlier is not None:
            return Verdict(duplicate=True) if earlier == result.digest else Verdict(rejection=conflict)
        try:
            value = self.codec.encode(RAW_BIOBANK.value_schema, result.record)
        except Exception as exc:
            return Verdict(rejection=Rejection(f"not encodable as BiobankEvent ({type(exc).__name__})", prefix))
        self._events[result.event_id] = result.digest
        self._unrecorded.append((result.event_id, result.digest, ctx.lims_key_id))
        key = subject_key(self.site_id, result.participant_id)
        return Verdict([(self.raw_biobank, (key, value, [redriven_header(rec)]))])


def make_redriver(settings: Settings) -> IngestRedriver:
    """The ingest stage's re-driver (`clinstream dlq redrive --stage ingest`), with the current ingest settings."""
    return IngestRedriver(settings)
