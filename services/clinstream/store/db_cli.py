"""`clinstream db`: apply the feature-store migrations to the site's schema."""

from __future__ import annotations

import typer
from rich.console import Console

from clinstream.core.config import get_settings
from clinstream.store.migrate import migrate as run_migrate

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


@app.command("migrate")
def migrate() -> None:
    """Create the site schema and apply pending migrations (idempotent)."""
    report = run_migrate(get_settings())
    console.print(f"schema {report.schema} (TimescaleDB edition: {report.edition})")
    for name in report.applied:
        console.print(f"  applied  {name}")
    for name in report.skipped_community:
        console.print(f"  skipped  {name} (needs the community edition)")
    if not report.applied:
        console.print("  up to date")
