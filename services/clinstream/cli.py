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
    ("gateway", "clinstream.ingest.gateway_cli", "Run the HTTP gateway for device telemetry and LIMS events."),
    ("devices", "clinstream.ingest.devices_cli", "Device credentials: register, revoke, list."),
    ("lims", "clinstream.ingest.lims_cli", "LIMS API keys and CSV imports."),
    ("simulate", "clinstream.simulate.cli", "Simulated wearables and LIMS sending to the gateway."),
    ("keys", "clinstream.pseudonymise.cli", "The site's pseudonym key ring: init, rotate, show."),
    ("worker", "clinstream.worker_cli", "Run a stream-processing worker (pseudonymise, ...)."),
    ("features", "clinstream.features_cli", "The feature catalogue: catalogue, promote, export."),
    ("export", "clinstream.export.cli", "Export feature sets to Parquet or CSV with a data dictionary."),
    ("replay", "clinstream.replay.cli", "Re-run a stage over a range of its input topics (versioned or in place)."),
    ("dlq", "clinstream.replay.dlq_cli", "List, inspect and re-drive dead-lettered records by stage."),
    ("lag", "clinstream.replay.lag_cli", "Consumer-group lag per partition and feature-set freshness."),
    ("console", "clinstream.console.cli", "Serve the read-only site console (health, participants, cohort)."),
    ("federated", "clinstream.federated.cli", "Federated training with Flower: superlink, supernode, run, demo."),
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
