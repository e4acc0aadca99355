"""Batched, idempotent writes into the feature store: COPY into a staging table, then one monotonic upsert.

Rules (the store's half of "exactly-once in effect"):

* `wearable_features` is keyed by (participant_pseudonym, feature_set, window_kind, window_start, version) and
  `sample_features` by (sample_pseudonym, version). A row is replaced only by a strictly greater
  (revision, is_final) (samples: revision), so duplicates, replays and stale late copies leave one correct row.
  Duplicates inside a batch are coalesced in Python first (the greatest wins, the first of equals), because one
  INSERT ... ON CONFLICT may not touch a row twice.
* Erasures run first in the same transaction: every row of the pseudonym is deleted from every table of the
  site schema that has a `participant_pseudonym` column (except the erasure bookkeeping), the pseudonym goes
  into `erased_participants` with the request time, and `erasure_audit` gets one row per request id. Upserts
  are filtered against `erased_participants`: a wearable window starting, or a sample collected, before the
  erasure is never stored again, so a late copy or a replay cannot resurrect erased data.

The writer runs inside the caller's transaction; the caller commits (one transaction per batch).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps

from clinstream.core.timeutil import to_ms

WEARABLE_KEY = ("participant_pseudonym", "feature_set", "window_kind", "window_start", "version")
WEARABLE_COLUMNS = (*WEARABLE_KEY, "window_end", "utc_offset_minutes", "feature_values", "completeness",
                    "is_final", "revision", "computed_at")
# Staging types: instants are staged as epoch milliseconds (int8) and become timestamptz in the upsert's SELECT
# (`INSTANT_COLUMNS`), so no datetime object is made per row and field in Python (half the writer's CPU per row).
_WEARABLE_TYPES = ("text", "text", "text", "int8", "int4", "int8", "int4", "jsonb", "float8", "bool", "int8", "int8")
SAMPLE_KEY = ("sample_pseudonym", "version")
SAMPLE_COLUMNS = (*SAMPLE_KEY, "participant_pseudonym", "parent_sample_pseudonym", "sample_type", "collected_at",
                  "collection_to_centrifugation_min", "collection_to_freezing_min", "sprec", "freeze_thaw_count",
                  "temperature_excursions", "status", "assays", "revision", "computed_at")
_SAMPLE_TYPES = ("text", "int4", "text", "text", "text", "int8", "float8", "float8", "text", "int4", "int4", "text",
                 "jsonb", "int8", "int8")
INSTANT_COLUMNS = frozenset({"window_start", "window_end", "collected_at", "computed_at"})  # timestamptz in the tables
# Tables that keep a pseudonym on purpose: the erasure bookkeeping itself.
ERASURE_KEEP_TABLES = frozenset({"erasure_audit", "erased_participants"})

_STAGE_WEARABLE = "store_stage_wearable"
_STAGE_SAMPLE = "store_stage_sample"

WearableRow = tuple[Any, ...]
SampleRow = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Erasure:
    """One erasure request as the writer needs it."""

    request_id: uuid.UUID
    participant_pseudonym: str
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    """What one erasure request did; `first_time` is False when the request id had been honoured before."""

    request: Erasure
    rows_deleted: int
    first_time: bool
    completed_at: datetime


@dataclass(slots=True)
class WriteResult:
    """Counts of one batch write."""

    wearable_in: int = 0
    wearable_written: int = 0
    sample_in: int = 0
    sample_written: int = 0
    coalesced: int = 0
    erasures: list[ErasureOutcome] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        """Rows that changed nothing: stale or equal revisions, or blocked by an erasure."""
        return self.wearable_in + self.sample_in - self.coalesced - self.wearable_written - self.sample_written


def _ms(value: datetime | int) -> int:
    """Epoch milliseconds of an instant as records carry it (an int, or a datetime from a logical-type decode)."""
    return value if type(value) is int else to_ms(value)


def _ms_or_none(value: datetime | int | None) -> int | None:
    return None if value is None else _ms(value)


def _json(values: Mapping[str, float]) -> dict[str, float]:
    return dict(values)


def wearable_row(rec: Mapping[str, Any]) -> WearableRow:
    """The `wearable_features` row (WEARABLE_COLUMNS order) of a decoded FeatureRecord."""
    return (rec["participant_pseudonym"], rec["feature_set"], rec["window"], _ms(rec["window_start"]),
            rec["version"], _ms(rec["window_end"]), rec.get("utc_offset_minutes", 0), _json(rec["values"]),
            rec["completeness"], rec["is_final"], rec["revision"], _ms(rec["computed_at"]))


def sample_row(rec: Mapping[str, Any]) -> SampleRow:
    """The `sample_features` row (SAMPLE_COLUMNS order) of a decoded SampleFeatureRecord."""
    return (rec["sample_pseudonym"], rec["version"], rec["participant_pseudonym"], rec.get("parent_sample_pseudonym"),
            rec["sample_type"], _ms_or_none(rec.get("collected_at")), rec.get("collection_to_centrifugation_min"),
            rec.get("collection_to_freezing_min"), rec.get("sprec"), rec["freeze_thaw_count"],
            rec["temperature_excursions"], rec["status"], _json(rec.get("assays") or {}), rec["revision"],
            _ms(rec["computed_at"]))


def coalesce_wearable(rows: Iterable[WearableRow]) -> list[WearableRow]:
    """One row per key: the greatest (revision, is_final); the first one among equals (as the upsert keeps)."""
    best: dict[tuple[Any, ...], WearableRow] = {}
    for row in rows:
        key = row[:5]
        cur = best.get(key)
        if cur is None or (row[10], row[9]) > (cur[10], cur[9]):
            best[key] = row
    return list(best.values())


def coalesce_samples(rows: Iterable[SampleRow]) -> list[SampleRow]:
    """One row per (sample_pseudonym, version): the greatest revision; the first one among equals."""
    best: dict[tuple[Any, ...], SampleRow] = {}
    for row in rows:
        key = row[:2]
        cur = best.get(key)
        if cur is None or row[13] > cur[13]:
            best[key] = row
    return list(best.values())


def _stage_ddl(name: str, columns: Sequence[str], types: Sequence[str]) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(columns, types,
                                                                                                         strict=True))
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(sql.Identifier(name), cols)


def _instant(column: str) -> str:
    """SQL of a staged instant column as timestamptz: its epoch milliseconds converted (exact: a double holds any such
    instant to well below a microsecond, and to_timestamp rounds to microseconds)."""
    return f"to_timestamp(s.{column} / 1000.0::float8)"


def _staged(column: str) -> sql.Composable:
    """A staged column as its table stores it (instants converted by `_instant`)."""
    if column in INSTANT_COLUMNS:
        return sql.SQL(_instant(column))
    return sql.SQL("s.{}").format(sql.Identifier(column))


def _upsert_sql(table: str, stage: str, columns: Sequence[str], key: Sequence[str], newer: str,
                after_erasure: str) -> sql.Composed:
    col_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                 for c in columns if c not in key)
    return sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT {scols} FROM {stage} s"
        " LEFT JOIN erased_participants e ON e.participant_pseudonym = s.participant_pseudonym"
        " WHERE e.participant_pseudonym IS NULL OR ({after_erasure})"
        " ON CONFLICT ({key}) DO UPDATE SET {updates}, stored_at = now() WHERE {newer}"
    ).format(table=sql.Identifier(table), cols=col_list, scols=sql.SQL(", ").join(map(_staged, columns)),
             stage=sql.Identifier(stage), after_erasure=sql.SQL(after_erasure),
             key=sql.SQL(", ").join(map(sql.Identifier, key)), updates=updates, newer=sql.SQL(newer))


_WEARABLE_UPSERT = _upsert_sql(
    "wearable_features", _STAGE_WEARABLE, WEARABLE_COLUMNS, WEARABLE_KEY,
    "(EXCLUDED.revision, EXCLUDED.is_final) > (t.revision, t.is_final)",
    f"{_instant('window_start')} >= e.erased_at")
_SAMPLE_UPSERT = _upsert_sql(
    "sample_features", _STAGE_SAMPLE, SAMPLE_COLUMNS, SAMPLE_KEY,
    "EXCLUDED.revision > t.revision",
    f"s.collected_at IS NOT NULL AND {_instant('collected_at')} >= e.erased_at")

_PSEUDONYM_TABLES = """
SELECT c.table_name FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = current_schema() AND c.column_name = 'participant_pseudonym' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name
"""


class StoreWriter:
    """Writes decoded feature records and erasure requests through one connection, in the caller's transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        set_json_dumps(orjson.dumps, context=conn)  # jsonb values go through binary COPY as dicts

    def write(self, wearable: Sequence[Mapping[str, Any]] = (), samples: Sequence[Mapping[str, Any]] = (),
              erasures: Sequence[Erasure] = ()) -> WriteResult:
        """Apply erasures, then upsert the feature rows; run inside a transaction that the caller commits."""
        result = WriteResult(wearable_in=len(wearable), sample_in=len(samples))
        with self.conn.cursor() as cur:
            if erasures:
                result.erasures = self._erase(cur, erasures)
            if wearable:
                rows = coalesce_wearable(wearable_row(r) for r in wearable)
                result.coalesced += len(wearable) - len(rows)
                result.wearable_written = self._upsert(cur, _STAGE_WEARABLE, WEARABLE_COLUMNS, _WEARABLE_TYPES,
                                                       rows, _WEARABLE_UPSERT)
            if samples:
                srows = coalesce_samples(sample_row(r) for r in samples)
                result.coalesced += len(samples) - len(srows)
                result.sample_written = self._upsert(cur, _STAGE_SAMPLE, SAMPLE_COLUMNS, _SAMPLE_TYPES, srows,
                                                     _SAMPLE_UPSERT)
        return result

    @staticmethod
    def _upsert(cur: psycopg.Cursor[Any], stage: str, columns: Sequence[str], types: Sequence[str],
                rows: Sequence[tuple[Any, ...]], upsert: sql.Composed) -> int:
        cur.execute(_stage_ddl(stage, columns, types))
        cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(stage)))  # empty unless a savepoint retried
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(stage), sql.SQL(", ").join(map(sql.Identifier, columns)))
        with cur.copy(copy_sql) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)
        cur.execute(upsert)
        return max(cur.rowcount, 0)

    def _erase(self, cur: psycopg.Cursor[Any], erasures: Sequence[Erasure]) -> list[ErasureOutcome]:
        cur.execute(_PSEUDONYM_TABLES)
        tables = [str(r[0]) for r in cur.fetchall() if str(r[0]) not in ERASURE_KEEP_TABLES]
        outcomes: list[ErasureOutcome] = []
        for req in sorted(erasures, key=lambda e: e.requested_at):
            cur.execute(
                "INSERT INTO erased_participants (participant_pseudonym, erased_at) VALUES (%s, %s)"
                " ON CONFLICT (participant_pseudonym) DO UPDATE"
                " SET erased_at = GREATEST(erased_participants.erased_at, EXCLUDED.erased_at)",
                (req.participant_pseudonym, req.requested_at))
            cur.execute("SELECT rows_deleted, completed_at FROM erasure_audit WHERE request_id = %s",
                        (req.request_id,))
            done = cur.fetchone()
            if done is not None:  # honoured before: a replay or a duplicate changes nothing
                outcomes.append(ErasureOutcome(req, int(done[0]), False, done[1]))
                continue
            deleted = 0
            for table in tables:
                cur.execute(sql.SQL("DELETE FROM {} WHERE participant_pseudonym = %s").format(sql.Identifier(table)),
                            (req.participant_pseudonym,))
                deleted += max(cur.rowcount, 0)
            cur.execute(
                "INSERT INTO erasure_audit (request_id, participant_pseudonym, requested_at, rows_deleted)"
                " VALUES (%s, %s, %s, %s) RETURNING completed_at",
                (req.request_id, req.participant_pseudonym, req.requested_at, deleted))
            row = cur.fetchone()
            assert row is not None
            outcomes.append(ErasureOutcome(req, deleted, True, row[0]))
        return outcomes


def continuous_aggregates(conn: psycopg.Connection[Any]) -> list[str]:
    """Qualified names of the continuous aggregates of the site schema (none on the apache edition)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute("SELECT format('%I.%I', view_schema, view_name) FROM timescaledb_information.continuous_aggregates"
                    " WHERE view_schema = current_schema() ORDER BY view_name")
        return [str(r[0]) for r in cur.fetchall()]


def refresh_continuous_aggregates(conn: psycopg.Connection[Any], names: Sequence[str]) -> None:
    """Re-materialise invalidated buckets (after an erasure), outside any transaction, as TimescaleDB requires."""
    if not names:
        return
    previous = conn.autocommit
    conn.autocommit = True
    try:
        for name in names:
            conn.execute("CALL refresh_continuous_aggregate(%s::regclass, NULL, NULL)", (name,))
    finally:
        conn.autocommit = previous
