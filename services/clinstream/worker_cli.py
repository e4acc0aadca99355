"""`clinstream worker <stage>`: run one stream-processing worker of the configured site."""

from __future__ import annotations

import typer

from clinstream.core.config import get_settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def worker() -> None:
    """Run a stream-processing worker of the configured site (CLINSTREAM_SITE_ID)."""


@app.command("pseudonymise")
def pseudonymise() -> None:
    """Pseudonymise raw telemetry and biobank events and enforce consent."""
    from clinstream.pseudonymise.worker import run

    run(get_settings())


@app.command("features")
def features() -> None:
    """Compute event-time wearable and biobank features from the pseudonymised topics."""
    from clinstream.features.worker import run

    run(get_settings())


@app.command("store")
def store() -> None:
    """Write feature records into TimescaleDB and honour erasure requests (the feature-store sink)."""
    from clinstream.store.worker import run

    run(get_settings())
