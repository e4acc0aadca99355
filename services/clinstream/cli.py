"""The `clinstream` command: one typer app with a lazily loaded sub-command group per service or tool.

Development commands (the local stack, the simulators, demo data) are not part of the site runtime: they come
from the distributions that register `clinstream.commands` entry points (`clinstream_devtools.commands`), each a
tuple of (command, module, help). Such a command either adds a group or adds sub-commands to a group of the same
name here; this module never imports development code by name.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

import click
import typer

Subcommand = tuple[str, str, str]
PLUGIN_GROUP = "clinstream.commands"

# (command, module that exports a typer `app`, help). Listed in data-flow order.
_SUBCOMMANDS: tuple[Subcommand, ...] = (
    ("topics", "clinstream.core.topics_cli", "The site's topic catalogue."),
    ("schemas", "clinstream.core.schemas_cli", "The Avro schema catalogue and its compatibility lock."),
    ("db", "clinstream.store.db_cli", "Feature-store database migrations."),
    ("gateway", "clinstream.ingest.gateway_cli", "Run the HTTP gateway for device telemetry and LIMS events."),
    ("devices", "clinstream.ingest.devices_cli", "Device credentials: register, revoke, list."),
    ("lims", "clinstream.ingest.lims_cli", "LIMS API keys and CSV imports."),
    ("keys", "clinstream.pseudonymise.cli", "The site's pseudonym key ring: init, rotate, show."),
    ("worker", "clinstream.worker_cli", "Run a stream-processing worker (pseudonymise, ...)."),
    ("features", "clinstream.features_cli", "The feature catalogue: catalogue, promote, export."),
    ("export", "clinstream.export.cli", "Export feature sets to Parquet or CSV with a data dictionary."),
    ("replay", "clinstream.replay.cli", "Re-run a stage over a range of its input topics (versioned or in place)."),
    ("dlq", "clinstream.replay.dlq_cli", "List, inspect and re-drive dead-lettered records by stage."),
    ("lag", "clinstream.replay.lag_cli", "Consumer-group lag per partition and feature-set freshness."),
    ("console", "clinstream.console.cli", "Serve the read-only site console (health, participants, cohort)."),
    ("federated", "clinstream.federated.cli", "Federated training with Flower: superlink, supernode, run."),
)


@functools.cache
def plugin_commands() -> tuple[Subcommand, ...]:
    """The commands registered under the `clinstream.commands` entry points, in registration order."""
    found: list[Subcommand] = []
    for entry in entry_points(group=PLUGIN_GROUP):
        found.extend(entry.load())
    return tuple(found)


def _typer_command(module: str) -> click.Command:
    return typer.main.get_command(importlib.import_module(module).app)


def _extend(group: click.Command, module: str) -> None:
    """Adds the sub-commands of `module`'s app to `group`."""
    if not isinstance(group, click.Group):
        raise TypeError(f"{module} extends {group.name!r}, which has no sub-commands")
    extra = _typer_command(module)
    subcommands = extra.commands if isinstance(extra, click.Group) else {extra.name or "": extra}
    for name, command in subcommands.items():
        group.add_command(command, name)


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when that sub-command runs, so the CLI starts fast."""

    def _development_only(self) -> list[Subcommand]:
        site = {name for name, _, _ in _SUBCOMMANDS}
        return [entry for entry in plugin_commands() if entry[0] not in site]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in (*_SUBCOMMANDS, *self._development_only())]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, _, help_text in _SUBCOMMANDS])
        development = self._development_only()
        if development:
            with formatter.section("Development commands (not part of a site's runtime)"):
                formatter.write_dl([(name, help_text) for name, _, help_text in development])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entries = [entry for entry in (*_SUBCOMMANDS, *plugin_commands()) if entry[0] == cmd_name]
        if not entries:
            if not plugin_commands():
                ctx.fail(f"No such command {cmd_name!r}. Development commands (local stack, simulators, demos) "
                         f"register through the {PLUGIN_GROUP!r} entry point: reinstall the distribution "
                         "(bash scripts/bootstrap, or pip install -e .).")
            return None
        _, module, help_text = entries[0]
        command = _typer_command(module)
        for _, extension, _ in entries[1:]:
            _extend(command, extension)
        command.help = command.help or help_text
        command.short_help = help_text
        return command


cli = _LazyGroup(name="clinstream", no_args_is_help=True,
                 help="Site-local streaming of wearable telemetry and biobank events.")


def main() -> None:
    """Entry point of the `clinstream` console script."""
    cli()
