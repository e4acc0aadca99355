"""`clinstream features`: the feature catalogue, version promotion and exports (a tool above the stages)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from clinstream.export.cli import export_command
from clinstream.features.catalogue import CATALOGUE
from clinstream.replay.promote import promote_command

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


@app.callback()
def features() -> None:
    """The feature catalogue, promotion of a feature version and exports of the feature store."""


@app.command("catalogue")
def catalogue() -> None:
    """Print every feature with its unit, windows, version, LOINC code and definition."""
    table = Table("set", "name", "unit", "windows", "version", "LOINC", "definition", title="Feature catalogue")
    for d in CATALOGUE:
        table.add_row(d.feature_set, d.name, d.unit, ", ".join(w.value for w in d.windows) or "per sample",
                      str(d.version), d.loinc or "", d.definition)
    console.print(table)

app.command("promote")(promote_command)
app.command("export")(export_command)
