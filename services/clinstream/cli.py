"""The `clinstream` command: one typer app with a lazily loaded sub-command group per service or tool."""

from __future__ import annotations

import importlib

import click
import typer

# (command, module that exports a typer `app`, help). Listed in data-flow order.
_SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("stack", "clinstream.stack.cli", "Start, stop and inspect the local Kafka and TimescaleDB."),
    ("topics", "clinstream.core.topics_cli", "The site's topic catalogue."),
    ("schemas", "clinstream.core.schemas_cli", "The Avro schema catalogue and its compatibility lock."),
    ("db", "clinstream.store.db_cli", "Feature-store database migrations."),
)


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when that sub-command runs, so the CLI starts fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in _SUBCOMMANDS]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, _, help_text in _SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, help_text in _SUBCOMMANDS:
            if name == cmd_name:
                command = typer.main.get_command(importlib.import_module(module).app)
                command.help = command.help or help_text
                command.short_help = help_text
                return command
        return None


cli = _LazyGroup(name="clinstream", no_args_is_help=True,
                 help="Site-local streaming of wearable telemetry and biobank events.")


def main() -> None:
    """Entry point of the `clinstream` console script."""
    cli()
