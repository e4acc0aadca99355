"""`clinstream schemas`: check the catalogue and record released versions in the compatibility lock."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from clinstream.core.compat import check_catalogue, lock_catalogue
from clinstream.core.schemas import LOCK_FILE, load_catalogue, schemas_dir

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


@app.command("check")
def check() -> None:
    """Check docs, naming and compatibility of every schema against its released versions."""
    problems = check_catalogue(load_catalogue())
    for p in problems:
        console.print(f"[red]✗[/red] {p}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]schema catalogue OK[/green]")


@app.command("lock")
def lock() -> None:
    """Record the current version of every changed schema as released (after `check` passes)."""
    directory = schemas_dir()
    added = lock_catalogue(load_catalogue(directory), directory)
    console.print(json.dumps(added, indent=2) if added else f"{LOCK_FILE} already up to date")
