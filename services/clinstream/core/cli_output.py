"""Listing output for every terminal: `--output table|json|csv`; tables keep key columns whole without a TTY,
and an empty cell says why it is empty."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """A value as table text; None and "" become the column's reason."""
    if value is None or value == "":
        return column.empty
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _width(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], title: str) -> int:
    """Width that fits every cell on one line (rich shrinks and cuts columns to the 80-column default otherwise)."""
    widths = [max([len(c.heading), *(len(cell(r.get(c.key), c)) for r in rows)]) for c in columns]
    return max(_MIN_WIDTH, len(title) + 4, sum(widths) + 3 * len(columns) + 1)


def table_console(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], title: str) -> Console:
    """A console to the terminal; without a TTY, wide enough for the whole table."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=_width(columns, rows, title), no_color=True)


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
            writer.writerow(["" if r.get(c.key) is None else r.get(c.key) for c in columns])
        return
    console = table_console(columns, rows, title)
    if not rows and empty:
        console.print(f"{title}: {empty}" if title else empty)
        return
    table = Table(title=title or None)
    for c in columns:
        table.add_column(c.heading, no_wrap=c.key_column, overflow="fold", justify="right" if c.right else "left",
                         min_width=len(c.heading))
    for r in rows:
        table.add_row(*(cell(r.get(c.key), c) for c in columns), style="bold" if r.get("_total") else None)
    console.print(table)
