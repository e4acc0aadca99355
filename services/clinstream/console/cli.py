"""`clinstream console`: serve the read-only site console (loopback by default, admin token required)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from clinstream.console.app import create_app
from clinstream.console.auth import TokenError, load_token
from clinstream.console.sampler import Sampler
from clinstream.console.snapshot import Snapshots
from clinstream.console.store_reads import open_pool
from clinstream.core.config import get_settings
from clinstream.core.constants import CONSOLE_HOST, CONSOLE_PORT

app = typer.Typer(pretty_exceptions_enable=False)
err = Console(stderr=True)


@app.command("console")
def console(
    host: Annotated[str, typer.Option(help="Listen address; loopback unless you mean otherwise.")] = CONSOLE_HOST,
    port: Annotated[int, typer.Option(min=1024, max=65535)] = CONSOLE_PORT,
    token_file: Annotated[Path | None, typer.Option(help="File holding the admin token (else "
                                                         "$CLINSTREAM_CONSOLE_TOKEN).")] = None,
    metrics_url: Annotated[list[str] | None, typer.Option(help="Prometheus endpoint to scrape (repeatable); "
                                                               "default: the gateway's /metrics.")] = None,
    sample_every: Annotated[float, typer.Option(min=1.0, help="Seconds between samples of offsets and metrics.")]
    = 10.0,
) -> None:
    """Serve the console: pipeline health, participant view by pseudonym, cohort view."""
    try:
        token = load_token(token_file)
    except (TokenError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        err.print(f"[yellow]warning:[/yellow] serving the console on {host}, not loopback")
    settings = get_settings()
    urls = metrics_url or [f"http://{settings.gateway_host}:{settings.gateway_port}/metrics"]
    sampler = Sampler(settings, urls, sample_every)
    sampler.start()
    pool = open_pool(settings)
    snapshots = Snapshots(pool, max(sample_every, 30.0))
    snapshots.start()
    web = create_app(settings, token, sampler, pool, snapshots)
    err.print(f"console on http://{host}:{port}/ (site {settings.site_id})")
    uvicorn.run(web, host=host, port=port, log_level="warning")
