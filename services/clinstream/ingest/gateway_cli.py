"""`clinstream gateway`: run the HTTP gateway (uvicorn) for the configured site."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from clinstream.core.config import get_settings
from clinstream.core.constants import ENV_PREFIX
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
    tls_cert: Path | None = typer.Option(None, "--tls-cert", exists=True, dir_okay=False, readable=True,
                                         help="PEM certificate (chain) file: serve HTTPS only."),
    tls_key: Path | None = typer.Option(None, "--tls-key", exists=True, dir_okay=False, readable=True,
                                        help="PEM private key file of --tls-cert."),
    client_ca: Path | None = typer.Option(None, "--client-ca", exists=True, dir_okay=False, readable=True,
                                          help="PEM CA file: require client certificates it signed (mutual TLS, "
                                               "e.g. a gateway for the LIMS)."),
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
    if (tls_cert is None) != (tls_key is None) or (client_ca is not None and tls_cert is None):
        console.print("[red]error:[/] --tls-cert and --tls-key go together, and --client-ca needs them",
                      highlight=False)
        raise typer.Exit(2)
    # The app learns from the environment that its TLS layer verified every client's certificate.
    os.environ[ENV_PREFIX + "INGEST_CLIENT_CERT_VERIFIED"] = "true" if client_ca is not None else "false"
    tls: dict[str, Any] = {} if tls_cert is None else {
        "ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key),
        **({"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED} if client_ca is not None else {})}
    scheme = "https" if tls else "http"
    console.print(f"gateway of site {settings.site_id} on {scheme}://{host or settings.gateway_host}:"
                  f"{port or settings.gateway_port} (OpenAPI at /docs)"
                  f"{'; client certificates required' if client_ca else ''}", highlight=False)
    # No access log: it would record client IP addresses, which count as identifiers.
    uvicorn.run("clinstream.ingest.app:app_from_env", factory=True, host=host or settings.gateway_host,
                port=port or settings.gateway_port, workers=workers, log_level=log_level, access_log=False,
                server_header=False, proxy_headers=False, timeout_keep_alive=keep_alive_s, **tls)
