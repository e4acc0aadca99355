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
_FOLD_ABOVE = 32  # non-key columns wrap between words; only a word longer than this may be cut


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


def _longest_word(column: Column, rows: Sequence[Mapping[str, Any]]) -> int:
    return max([len(word) for r in rows for word in cell(r.get(column.key), column).split()], default=0)


def _min_widths(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], widths: Sequence[int]) -> list[int]:
    """How narrow a column may get: a key column never below its longest cell, the others wrap between words (only
    a word longer than _FOLD_ABOVE may be cut)."""
    return [w if c.key_column else min(w, max(len(c.heading), min(_longest_word(c, rows), _FOLD_ABOVE)))
            for c, w in zip(columns, widths, strict=True)]


def fitted_widths(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], total: int) -> list[int]:
    """Column widths for a table of at most `total` characters, or wider where the key columns need it: every
    column starts at its least width; the spare width makes the columns that need least whole first, and what
    then remains is shared evenly by the columns that still wrap."""
    widths = _widths(columns, rows)
    fitted = _min_widths(columns, rows, widths)
    spare = total - (sum(fitted) + 3 * len(columns) + 1)
    short_first = sorted(range(len(columns)), key=lambda i: widths[i] - fitted[i])
    for rank, i in enumerate(short_first):
        share = max(spare, 0) // (len(columns) - rank)
        grow = min(widths[i] - fitted[i], share)
        fitted[i] += grow
        spare -= grow
    return fitted


def _table_width(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], title: str) -> int:
    """The width to fill: the terminal's; without a TTY $COLUMNS or _PIPED_WIDTH (rich would use 80), never more than
    one line per row needs."""
    if sys.stdout.isatty():
        return Console().width
    whole = max(_MIN_WIDTH, len(title) + 4, sum(_widths(columns, rows)) + 3 * len(columns) + 1)
    wanted = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else _PIPED_WIDTH
    return min(whole, wanted)


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
    width = _table_width(columns, rows, title)
    fitted = fitted_widths(columns, rows, width)
    # the console is as wide as the fitted table, so neither rich nor a narrow terminal setting cuts a key column
    console = Console(width=max(width, sum(fitted) + 3 * len(columns) + 1), no_color=not sys.stdout.isatty())
    if not rows and empty:
        console.print(f"{title}: {empty}" if title else empty, soft_wrap=True, highlight=False)
        return
    table = Table(title=title or None)
    for c, w in zip(columns, fitted, strict=True):
        table.add_column(c.heading, no_wrap=c.key_column, overflow="fold", justify="right" if c.right else "left",
                         min_width=w, max_width=w)
    for r in rows:
        table.add_row(*(cell(r.get(c.key), c) for c in columns), style="bold" if r.get("_total") else None)
    console.print(table)
