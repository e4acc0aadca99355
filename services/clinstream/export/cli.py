"""`clinstream features export`: feature sets to Parquet or CSV, each with its data dictionary, with a progress bar."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.export.query import ExportFilter
from clinstream.export.tables import NotAFeatureTable, check_table, table_for
from clinstream.export.writer import ExportFormat, write_export
from clinstream.features.catalogue import SAMPLE, WEARABLE_SETS
from clinstream.features.windows import WindowKind

app = typer.Typer(pretty_exceptions_enable=False)
console = Console(stderr=True)
_SETS = ", ".join((*WEARABLE_SETS, SAMPLE))


def _active_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT version FROM active_version").fetchone()
    if row is None:
        raise typer.BadParameter("the feature store has no active version (run `clinstream db migrate`)")
    return int(row[0])


@app.command("export")
def export_command(
    feature_set: Annotated[list[str], typer.Option("--feature-set", "-s", help=f"One or more of: {_SETS}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the files.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.PARQUET,
    window: Annotated[WindowKind | None, typer.Option(help="Only this window kind (wearable sets).")] = None,
    start: Annotated[datetime | None, typer.Option(help="Windows starting (samples: collected) at/after this UTC.")]
    = None,
    end: Annotated[datetime | None, typer.Option(help="... and before this UTC time.")] = None,
    version: Annotated[int | None, typer.Option(help="Feature version (default: the active one).")] = None,
    min_completeness: Annotated[float | None, typer.Option(help="Quality: windows with completeness >= this.")]
    = None,
    final_only: Annotated[bool, typer.Option("--final-only", help="Quality: closed windows only.")] = False,
    table: Annotated[str | None, typer.Option(help="Assert the feature-store table read (refuses any other).")]
    = None,
) -> None:
    """Export feature sets of the feature store (never any other table) with a data dictionary per file."""
    try:
        if table is not None:
            wanted = check_table(table)
            for name in feature_set:
                if table_for(name) != wanted:
                    raise NotAFeatureTable(f"feature set {name!r} lives in {table_for(name).name}, not {table}")
        for name in feature_set:
            table_for(name)
    except NotAFeatureTable as exc:
        raise typer.BadParameter(str(exc)) from exc
    utc = [d.replace(tzinfo=UTC) if d is not None and d.tzinfo is None else d for d in (start, end)]
    settings = get_settings()
    with connect_with_retry(settings) as conn:
        chosen = version if version is not None else _active_version(conn)
        conn.rollback()
        try:
            filters = [ExportFilter(name, chosen, window, utc[0], utc[1], min_completeness, final_only)
                       for name in feature_set]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            for f in filters:
                task = bar.add_task(f"export {f.feature_set}", total=None)

                def advance(done: int, total: int, task_id: TaskID = task) -> None:
                    bar.update(task_id, completed=done, total=total)

                result = write_export(conn, f, out, fmt, advance)
                console.print(f"{result.data_file}  {result.rows} rows  (dictionary {result.dictionary_file.name})")
