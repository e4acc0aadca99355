"""Listing output for every terminal: `--output table|json|csv`; tables keep key columns whole without a TTY,
and an empty cell says why it is empty."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


class OutputFormat(StrEnum):
    """How a listing command prints."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


OUTPUT_OPTION = typer.Option(OutputFormat.TABLE, "--output", "-o", help="table (for people), json or csv.")
_MIN_WIDTH = 80
_PIPED_WIDTH = 160  # a piped table's width unless $COLUMNS says otherwise; wider only for whole key columns
_FOLD_BELOW = 12  # non-key columns may wrap down to this width (or their heading's)


@dataclass(frozen=True, slots=True)
class Column:
    """A listing column: row key, heading, whether it must never be cut, and what an empty cell means."""

    key: str
    heading: str
    key_column: bool = False
    empty: str = ""
    right: bool = False


def resolve(output: OutputFormat, as_json: bool) -> OutputFormat:
    """The format asked for; the older `--json` flag still means json."""
    return OutputFormat.JSON if as_json else output


def cell(value: Any, column: Column) -> str:
    """A value as table text; None, "" and an empty list become the column's reason."""
    if value is None or value == "" or value == []:
        return column.empty
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def csv_value(value: Any) -> Any:
    """A value as a CSV field: None empty, lists and objects as JSON (one field, parseable)."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return value


def timestamp(value: datetime | None) -> str | None:
    """An instant as ISO 8601 to the second (None stays None, so the column can say why it is empty)."""
    return None if value is None else value.isoformat(timespec="seconds")


def _widths(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each column's width with every cell on one line."""
    return [max([len(c.heading), *(len(cell(r.get(c.key), c)) for r in rows)]) for c in columns]


def _min_widths(columns: Sequence[Column], widths: Sequence[int]) -> list[int]:
    """How narrow rich may make each column: key columns never below their longest cell, others a short word."""
    return [w if c.key_column else min(w, max(len(c.heading), _FOLD_BELOW))
            for c, w in zip(columns, widths, strict=True)]


def _piped_width(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], title: str) -> int:
    """Width without a TTY: $COLUMNS or _PIPED_WIDTH, wider where the key columns need it, never wider than one
    line per row needs (rich would otherwise cut columns down to its 80-column default)."""
    widths = _widths(columns, rows)
    borders = 3 * len(columns) + 1
    whole = max(_MIN_WIDTH, len(title) + 4, sum(widths) + borders)
    floor = sum(_min_widths(columns, widths)) + borders
    wanted = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else _PIPED_WIDTH
    return min(whole, max(wanted, floor))


def table_console(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], title: str) -> Console:
    """A console to the terminal; without a TTY, wide enough for whole key columns (other columns wrap)."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=_piped_width(columns, rows, title), no_color=True)


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], output: OutputFormat, *, title: str = "",
         empty: str = "", json_document: Any = None) -> None:
    """Print rows as a table, JSON (json_document if given, else the rows) or CSV (raw values, header first)."""
    if output is OutputFormat.JSON:
        sys.stdout.write(json.dumps(rows if json_document is None else json_document, default=str, indent=2) + "\n")
        return
    if output is OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for r in rows:
            writer.writerow([csv_value(r.get(c.key)) for c in columns])
        return
    console = table_console(columns, rows, title)
    if not rows and empty:
        console.print(f"{title}: {empty}" if title else empty)
        return
    table = Table(title=title or None)
    for c, least in zip(columns, _min_widths(columns, _widths(columns, rows)), strict=True):
        table.add_column(c.heading, no_wrap=c.key_column, overflow="fold", justify="right" if c.right else "left",
                         min_width=least)
    for r in rows:
        table.add_row(*(cell(r.get(c.key), c) for c in columns), style="bold" if r.get("_total") else None)
    console.print(table)
