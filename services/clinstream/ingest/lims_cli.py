"""`clinstream lims register-key|revoke-key|list-keys|import`: LIMS API keys and CSV imports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.core.kafka import BrokerUnavailable
from clinstream.core.logging import configure_logging
from clinstream.ingest.config import get_ingest_settings
from clinstream.ingest.credential_cli import run_update
from clinstream.ingest.credentials import CredentialError, list_lims, register_lims, revoke_lims, scope_lims
from clinstream.ingest.csv_import import CsvFormatError, count_rows
from clinstream.ingest.csv_runner import import_csv
from clinstream.ingest.gateway_db import DatabaseUnavailable
from clinstream.store.migrate import migrate

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)
MAX_REPORTED_ERRORS = 200


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
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        try:
            issued = register_lims(conn, name, event_types=event_types or None, sample_prefixes=sample_prefixes or None,
                                   max_requests_per_min=max_requests_per_min, max_events_per_min=max_events_per_min)
        except CredentialError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        conn.commit()
    err.print(f"key id {issued.key_id}; the key below is shown once:", highlight=False)
    typer.echo(issued.token)


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
    with connect_with_retry(get_settings(), max_wait_s=30.0) as conn:
        count = revoke_lims(conn, key_id)
        conn.commit()
    console.print(f"revoked {count} key(s)")
    raise typer.Exit(0 if count else 1)


@app.command("list-keys")
def list_keys(include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys.")) -> None:
    """LIMS API keys (never secrets)."""
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        rows = list_lims(conn, include_revoked=include_revoked)
    table = Table("key id", "LIMS", "event types", "sample prefixes", "created", "revoked")
    for row in rows:
        table.add_row(row.key_id, row.lims_name, ",".join(row.event_types or ["all"]),
                      ",".join(row.sample_prefixes or ["all"]), f"{row.created_at:%Y-%m-%d %H:%M}",
                      f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    console.print(table)


@app.command("import")
def import_(path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                        help="LIMS CSV export (columns: see clinstream.ingest.csv_import).")) -> None:
    """Validate and produce a LIMS CSV export like POST /v1/biobank/events; exit 1 if any row is rejected.

    Re-importing a file changes nothing (idempotent by event_id). Rejected rows go to the ingest DLQ.
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
    console.print(f"{report.rows} rows: {report.accepted} accepted, {report.duplicates} already imported, "
                  f"{len(report.errors)} rejected", highlight=False)
    if report.errors:
        table = Table("row", "event_id", "field", "reason", title="rejected rows (sent to the ingest DLQ)")
        for row, event_id, field_path, reason in report.errors[:MAX_REPORTED_ERRORS]:
            table.add_row(str(row), event_id or "", field_path or "", reason)
        console.print(table)
        if len(report.errors) > MAX_REPORTED_ERRORS:
            console.print(f"... and {len(report.errors) - MAX_REPORTED_ERRORS} more", highlight=False)
        raise typer.Exit(1)
