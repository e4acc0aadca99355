"""The `clinstream` command: one typer app with a sub-command group per service or tool."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(name="clinstream", no_args_is_help=True, add_completion=False,
                  help="Site-local streaming of wearable telemetry and biobank events.")

# (command, module that exports a typer `app`, help). Listed in data-flow order.
_SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("stack", "clinstream.stack.cli", "Start, stop and inspect the local Kafka and TimescaleDB."),
    ("topics", "clinstream.core.topics_cli", "The site's topic catalogue."),
    ("schemas", "clinstream.core.schemas_cli", "The Avro schema catalogue and its compatibility lock."),
    ("db", "clinstream.store.db_cli", "Feature-store database migrations."),
)

for _name, _module, _help in _SUBCOMMANDS:
    app.add_typer(importlib.import_module(_module).app, name=_name, help=_help)


def main() -> None:
    """Entry point of the `clinstream` console script."""
    app()
