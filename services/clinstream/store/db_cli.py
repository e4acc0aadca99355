"""`clinstream db`: apply the feature-store migrations to the site's schema and store the feature catalogue."""

from __future__ import annotations

import typer
from rich.console import Console

from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.store.catalogue_sync import sync_catalogue
from clinstream.store.migrate import migrate as run_migrate

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


@app.callback()
def db() -> None:
    """The site's feature-store database (keeps `migrate` a sub-command)."""


@app.command("migrate")
def migrate() -> None:
    """Create the site schema, apply pending migrations and store the feature catalogue (idempotent)."""
    settings = get_settings()
    report = run_migrate(settings)
    console.print(f"schema {report.schema} (TimescaleDB edition: {report.edition})")
    for name in report.applied:
        console.print(f"  applied  {name}")
    for name in report.skipped_community:
        console.print(f"  skipped  {name} (needs the community edition)")
    if not report.applied:
        console.print("  up to date")
    with connect_with_retry(settings) as conn:
        changed = sync_catalogue(conn)
        conn.commit()
    if changed is None:
        console.print("  feature catalogue: not available yet (no clinstream.features.catalogue)")
    else:
        console.print(f"  feature catalogue: {changed} row(s) written")
