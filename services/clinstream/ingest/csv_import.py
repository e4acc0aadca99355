"""LIMS CSV exports: rows to events, validated and produced by the same intake as POST /v1/biobank/events.

One row is one event. A header row names the columns (any order); an empty cell means "not given".

Columns of every row:

* event_id (LIMS event UUID; a re-import changes nothing), participant_id, kind (sample, assay or consent);
* occurred_at, recorded_at (RFC 3339 instants with offset; recorded_at optional);
* operator_name, operator_role, comment (optional).

Columns by kind:

* sample: event_type (COLLECTED, RECEIVED, CENTRIFUGED, ALIQUOTED, FROZEN, STORED, MOVED, THAWED, SHIPPED,
  DISTRIBUTED, DISPOSED, QC), sample_id, parent_sample_id, sample_type (SPREC), container (SPREC), quantity,
  quantity_unit, temperature_c, centrifuge_g, centrifuge_minutes, centrifuge_temperature_c, centrifuge_braking
  (for CENTRIFUGED), storage_location, storage_band, freeze_thaw_count, qc_passed, shipment_reference,
  disposal_reason;
* assay: sample_id, analyte, loinc_code, value, unit (e.g. CRP, 1988-5, 3.2, mg/L);
* consent: action (GRANT/WITHDRAW), status (FHIR), scope (DUO codes separated by ';' or spaces),
  participant_name, birth_date (YYYY-MM-DD), postcode, time_zone (the participant's IANA zone, e.g. Europe/Berlin).

Numbers and booleans (true/false, yes/no, 1/0) are converted; a cell that does not convert is passed on as
text so that validation names the field. A column that does not apply to the row's kind must be empty.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENT_COLUMNS = ("event_id", "participant_id", "occurred_at", "recorded_at", "operator_name", "operator_role",
                 "comment")
SAMPLE_COLUMNS = ("event_type", "sample_id", "parent_sample_id", "sample_type", "container", "quantity",
                  "quantity_unit", "temperature_c", "storage_location", "storage_band", "freeze_thaw_count",
                  "qc_passed", "shipment_reference", "disposal_reason")
CENTRIFUGE_COLUMNS = {"centrifuge_g": "g_force", "centrifuge_minutes": "minutes",
                      "centrifuge_temperature_c": "temperature_c", "centrifuge_braking": "braking"}
ASSAY_COLUMNS = ("sample_id", "analyte", "loinc_code", "value", "unit")
CONSENT_COLUMNS = ("action", "status", "scope", "participant_name", "birth_date", "postcode", "time_zone")
ALL_COLUMNS = frozenset((*EVENT_COLUMNS, "kind", *SAMPLE_COLUMNS, *CENTRIFUGE_COLUMNS, *ASSAY_COLUMNS,
                         *CONSENT_COLUMNS))
REQUIRED_COLUMNS = ("event_id", "participant_id", "occurred_at", "kind")
_FLOATS = {"quantity", "temperature_c", "value", "centrifuge_g", "centrifuge_minutes", "centrifuge_temperature_c"}
_INTS = {"freeze_thaw_count"}
_BOOLS = {"qc_passed", "centrifuge_braking"}
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f"}


class CsvFormatError(ValueError):
    """The file cannot be imported at all (no header, unknown or missing columns)."""


@dataclass
class CsvRow:
    """One data row: its number (1 = first data row), the event it maps to and its original CSV bytes."""

    number: int
    event: dict[str, Any]
    original: bytes


@dataclass
class ImportReport:
    """Outcome of an import."""

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str | None, str | None, str]] = field(default_factory=list)  # row, id, path, reason


def _convert(column: str, cell: str) -> Any:
    text = cell.strip()
    if column in _FLOATS:
        try:
            return float(text)
        except ValueError:
            return text
    if column in _INTS:
        try:
            return int(text)
        except ValueError:
            return text
    if column in _BOOLS:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else text
    if column == "scope":
        return [code for code in text.replace(";", " ").split() if code]
    return text


def row_to_event(row: dict[str, str]) -> dict[str, Any]:
    """The JSON event of one CSV row (as POST /v1/biobank/events takes it)."""
    cells = {k: _convert(k, v) for k, v in row.items() if k is not None and v is not None and v.strip() != ""}
    event: dict[str, Any] = {k: cells.pop(k) for k in EVENT_COLUMNS if k in cells}
    payload: dict[str, Any] = {"kind": cells.pop("kind", None)}
    centrifugation = {name: cells.pop(col) for col, name in CENTRIFUGE_COLUMNS.items() if col in cells}
    if centrifugation:
        payload["centrifugation"] = centrifugation
    payload.update(cells)
    event["payload"] = payload
    return event


def _line(values: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().encode()


def read_rows(path: Path) -> Iterator[CsvRow]:
    """The rows of a LIMS CSV export (UTF-8, optional BOM); CsvFormatError if its header is unusable."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise CsvFormatError("the file has no header row")
        names = [h.strip() for h in header]
        unknown = sorted(set(names) - ALL_COLUMNS)
        if unknown:
            raise CsvFormatError(f"unknown column(s): {', '.join(unknown)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise CsvFormatError(f"missing column(s): {', '.join(missing)}")
        if len(set(names)) != len(names):
            raise CsvFormatError("duplicate column names")
        for number, values in enumerate(reader, start=1):
            if not any(v.strip() for v in values):
                continue
            cells = dict(zip(names, values, strict=False))
            if len(values) > len(names):
                cells["__extra__"] = ",".join(values[len(names):])
            yield CsvRow(number, row_to_event(cells), _line(header) + _line(values))


def count_rows(path: Path) -> int:
    """Number of data rows (for the progress bar)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)
