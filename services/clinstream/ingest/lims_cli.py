"""`clinstream lims register-key|revoke-key|list-keys|import`: LIMS API keys and CSV imports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit
from clinstream.core.config import get_settings
from clinstream.core.kafka import BrokerUnavailable
from clinstream.core.logging import configure_logging
from clinstream.ingest.config import get_ingest_settings
from clinstream.ingest.credential_cli import listing_command, run_register, run_update
from clinstream.ingest.credentials import list_lims, register_lims, revoke_lims, scope_lims
from clinstream.ingest.csv_import import CsvFormatError, count_rows
from clinstream.ingest.csv_runner import import_csv
from clinstream.ingest.gateway_db import DatabaseUnavailable
from clinstream.store.migrate import migrate

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
err = Console(stderr=True)
MAX_REPORTED_ERRORS = 200

KEY_COLUMNS = (
    Column("key_id", "key id", key_column=True), Column("lims_name", "LIMS", key_column=True),
    Column("created_at", "created"), Column("revoked_at", "revoked", empty="(active)"),
    Column("event_types", "event types", empty="(all)"), Column("sample_prefixes", "sample prefixes", empty="(all)"),
)
REJECTED_COLUMNS = (
    Column("row", "row", key_column=True, right=True),
    Column("event_id", "event_id", key_column=True, empty="(no event id)"),
    Column("field", "field", empty="(whole row)"), Column("reason", "reason"),
)


_EVENT_TYPES_HELP = "Event types the key may post (repeat): lifecycle, assay, consent; default all."
_PREFIX_HELP = "Sample-id prefixes the key may post lifecycle/assay events for (repeat), e.g. SMP-; default all."


@app.command("register-key")
def register_key(
    name: str = typer.Argument(..., help="Label of the LIMS instance, e.g. lims-main."),
    event_types: list[str] | None = typer.Option(None, "--event-type", help=_EVENT_TYPES_HELP),
    sample_prefixes: list[str] | None = typer.Option(None, "--sample-prefix", help=_PREFIX_HELP),
    max_requests_per_min: int | None = typer.Option(None, "--max-requests-per-min", min=1,
                                                    help="Override the site's request limit for this key."),
    max_events_per_min: int | None = typer.Option(None, "--max-events-per-min", min=1,
                                                  help="Override the site's events limit for this key."),
) -> None:
    """Issue a LIMS API key; it is printed once and only its hash is stored."""
    run_register(lambda conn: register_lims(conn, name, event_types=event_types or None,
                                            sample_prefixes=sample_prefixes or None,
                                            max_requests_per_min=max_requests_per_min,
                                            max_events_per_min=max_events_per_min),
                 "the key below is shown once:")


@app.command("scope")
def scope(
    key_id: str = typer.Argument(..., help="Key id (see `lims list-keys`)."),
    event_types: list[str] | None = typer.Option(None, "--event-type", help=_EVENT_TYPES_HELP),
    sample_prefixes: list[str] | None = typer.Option(None, "--sample-prefix", help=_PREFIX_HELP),
) -> None:
    """Set a LIMS key's scope (no options: unrestricted); every gateway applies it within a second."""
    run_update(lambda conn: scope_lims(conn, key_id, event_types=event_types or None,
                                       sample_prefixes=sample_prefixes or None), "scoped {count} key(s)")


@app.command("revoke-key")
def revoke_key(key_id: str = typer.Argument(..., help="Key id (see `lims list-keys`).")) -> None:
    """Revoke a LIMS API key at once."""
    run_update(lambda conn: revoke_lims(conn, key_id), "revoked {count} key(s)")


app.command("list-keys")(listing_command(list_lims, KEY_COLUMNS, title="LIMS API keys", noun="LIMS API keys"))


@app.command("import")
def import_(path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                        help="LIMS CSV export (columns: see clinstream.ingest.csv_import)."),
            output: OutputFormat = OUTPUT_OPTION) -> None:
    """Validate and produce a LIMS CSV export like POST /v1/biobank/events; exit 1 if any row is rejected.

    Re-importing a file changes nothing (idempotent by event_id). Rejected rows go to the ingest DLQ.
    csv prints the rejected rows; json the counts and every rejected row.
    """
    configure_logging("lims-import")
    settings = get_settings()
    migrate(settings)
    try:
        total = count_rows(path)
        with Progress(TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as bar:
            task = bar.add_task("rows", total=total)
            report = asyncio.run(import_csv(settings, get_ingest_settings(), path,
                                            lambda n: bar.update(task, advance=n)))
    except CsvFormatError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except UnicodeDecodeError:
        err.print("[red]error:[/] the file is not UTF-8", highlight=False)
        raise typer.Exit(2) from None
    except (BrokerUnavailable, DatabaseUnavailable):
        err.print("[red]error:[/] the broker or database is unavailable; import again later (nothing doubles)",
                  highlight=False)
        raise typer.Exit(3) from None
    rejected = [{"row": row, "event_id": event_id, "field": field_path, "reason": reason}
                for row, event_id, field_path, reason in report.errors]
    counts = (f"{report.rows} rows: {report.accepted} accepted, {report.duplicates} already imported, "
              f"{len(report.errors)} rejected")
    if output is OutputFormat.TABLE:
        print(counts)
        if rejected:
            title = "rejected rows (sent to the ingest DLQ)"
            if len(rejected) > MAX_REPORTED_ERRORS:
                title += f": the first {MAX_REPORTED_ERRORS} (--output csv or json lists all)"
            emit(rejected[:MAX_REPORTED_ERRORS], REJECTED_COLUMNS, output, title=title)
    else:
        emit(rejected, REJECTED_COLUMNS, output, json_document={
            "rows": report.rows, "accepted": report.accepted, "duplicates": report.duplicates, "rejected": rejected})
    if report.errors:
        raise typer.Exit(1)
