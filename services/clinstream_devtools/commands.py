"""The development commands that the `clinstream` CLI loads through its `clinstream.commands` entry point."""

from __future__ import annotations

from typing import Final

# (command, module that exports a typer `app`, help). A command the runtime already has (federated) gains the
# module's sub-commands; the others are new groups, listed apart from the site's commands in `clinstream --help`.
COMMANDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("stack", "clinstream_devtools.stack.cli", "Start, stop and inspect the local Kafka and TimescaleDB."),
    ("simulate", "clinstream_devtools.simulate.cli", "Simulated wearables and LIMS sending to the gateway."),
    ("federated", "clinstream_devtools.federated.cli", "Demo data and a one-machine federation: fill, demo."),
)
