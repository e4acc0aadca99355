"""`clinstream gateway`: run the HTTP gateway (uvicorn) for the configured site."""

from __future__ import annotations

import typer
from rich.console import Console

from clinstream.core.config import get_settings
from clinstream.core.logging import configure_logging

app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)


@app.callback(invoke_without_command=True)
def gateway(
    host: str | None = typer.Option(None, help="Listen address; default CLINSTREAM_GATEWAY_HOST."),
    port: int | None = typer.Option(None, help="Listen port; default CLINSTREAM_GATEWAY_PORT."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    keep_alive_s: int = typer.Option(20, "--keep-alive", min=1, help="Seconds an idle keep-alive connection stays "
                                     "open (batching clients reuse connections)."),
    prepare: bool = typer.Option(True, "--prepare/--no-prepare",
                                 help="Create the site's topics and apply DB migrations first (idempotent)."),
) -> None:
    """Run the gateway: POST /v1/telemetry, POST /v1/biobank/events, /healthz, /readyz, /metrics, /docs."""
    import uvicorn

    configure_logging("gateway")
    settings = get_settings()
    if prepare:
        from clinstream.core.topic_admin import apply_topics
        from clinstream.store.migrate import migrate

        apply_topics(settings)
        migrate(settings)
    console.print(f"gateway of site {settings.site_id} on http://{host or settings.gateway_host}:"
                  f"{port or settings.gateway_port} (OpenAPI at /docs)", highlight=False)
    # No access log: it would record client IP addresses, which count as identifiers.
    uvicorn.run("clinstream.ingest.app:app_from_env", factory=True, host=host or settings.gateway_host,
                port=port or settings.gateway_port, workers=workers, log_level=log_level, access_log=False,
                server_header=False, proxy_headers=False, timeout_keep_alive=keep_alive_s)
