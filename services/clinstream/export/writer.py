"""Streams one export from a server-side cursor into Parquet or CSV, batch by batch, with its data dictionary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from clinstream.core.constants import EXPORT_BATCH_ROWS
from clinstream.export.dictionary import data_dictionary, dictionary_document
from clinstream.export.query import ExportFilter, column_names, count_query, export_query
from clinstream.features.catalogue import SAMPLE


class ExportFormat(StrEnum):
    """File formats of an export."""

    PARQUET = "parquet"
    CSV = "csv"


_TS = pa.timestamp("us", tz="UTC")
_TYPES: dict[str, pa.DataType] = {  # the other columns: text in sample exports, else numbers
    "participant_pseudonym": pa.string(), "feature_set": pa.string(), "window_kind": pa.string(),
    "window_start": _TS, "window_end": _TS, "computed_at": _TS, "collected_at": _TS,
    "utc_offset_minutes": pa.int32(), "version": pa.int32(), "revision": pa.int64(), "is_final": pa.bool_(),
    "completeness": pa.float64(), "freeze_thaw_count": pa.int32(), "temperature_excursions": pa.int32(),
    "collection_to_centrifugation_min": pa.float64(), "collection_to_freezing_min": pa.float64(),
}


def arrow_schema(f: ExportFilter) -> pa.Schema:
    """Column types, with each column's unit and definition from the data dictionary as field metadata."""
    fields = []
    for entry in data_dictionary(f):
        default = pa.string() if f.feature_set == SAMPLE else pa.float64()
        meta = {"unit": entry.unit, "definition": entry.definition, "quality_flag": str(entry.quality_flag).lower()}
        if entry.citation:
            meta["citation"] = entry.citation
        fields.append(pa.field(entry.column, _TYPES.get(entry.column, default), metadata=meta))
    return pa.schema(fields)


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote."""

    data_file: Path
    dictionary_file: Path
    rows: int


def _batches(conn: psycopg.Connection[Any], f: ExportFilter, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    query, params = export_query(f)
    with conn.cursor(name="clinstream_export") as cur:  # server-side: memory stays one batch
        cur.itersize = EXPORT_BATCH_ROWS
        cur.execute(query, params)
        while rows := cur.fetchmany(EXPORT_BATCH_ROWS):
            columns: Sequence[Sequence[Any]] = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)], schema=schema)


def count_rows(conn: psycopg.Connection[Any], f: ExportFilter) -> int:
    """Rows the export will write."""
    query, params = count_query(f)
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


Progress = Callable[[int, int], None]  # (rows written so far, rows in the export)


def write_export(conn: psycopg.Connection[Any], f: ExportFilter, out_dir: Path, fmt: ExportFormat,
                 progress: Progress | None = None) -> ExportResult:
    """Write `<set>.<fmt>` and `<set>.dictionary.json` into out_dir, all from one read-only snapshot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = out_dir / f"{f.feature_set}.{fmt.value}"
    schema = arrow_schema(f)
    assert tuple(schema.names) == column_names(f)  # the dictionary is the file's column list
    conn.rollback()
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    total = count_rows(conn, f)
    rows = 0
    if progress is not None:
        progress(rows, total)
    writer: pq.ParquetWriter | pa_csv.CSVWriter
    writer = (pq.ParquetWriter(data_file, schema, compression="zstd") if fmt is ExportFormat.PARQUET
              else pa_csv.CSVWriter(data_file, schema))
    with writer:
        for batch in _batches(conn, f, schema):
            writer.write_batch(batch)
            rows += batch.num_rows
            if progress is not None:
                progress(rows, total)
        if rows == 0:
            writer.write_table(schema.empty_table())
    conn.rollback()
    dictionary_file = out_dir / f"{f.feature_set}.dictionary.json"
    dictionary_file.write_text(json.dumps(dictionary_document(f, rows, data_file.name), indent=2) + "\n")
    return ExportResult(data_file, dictionary_file, rows)
