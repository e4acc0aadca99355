"""The HTTP /metrics endpoint of a stream worker: CLINSTREAM_METRICS_PORT plus the stage's offset, loopback."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from clinstream.core import constants as c

log = logging.getLogger("clinstream.core.metrics_endpoint")


class MetricsSettings(BaseSettings):
    """Where the workers serve their metrics (CLINSTREAM_METRICS_* in the environment or `.env`)."""

    model_config = SettingsConfigDict(env_prefix=c.ENV_PREFIX + "METRICS_", env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    port: int = Field(default=0, ge=0, le=65535 - max(c.METRICS_PORT_OFFSETS.values()),
                      description="Base port; stage i serves on port + its offset. 0 turns the endpoints off.")
    host: str = c.METRICS_HOST


def stage_port(settings: MetricsSettings, stage: str) -> int | None:
    """The port a stage's worker serves its metrics on, or None when metrics are off."""
    return settings.port + c.METRICS_PORT_OFFSETS[stage] if settings.port else None


def serve_metrics(stage: str, settings: MetricsSettings | None = None) -> int | None:
    """Serve the process's default registry on the stage's port in a daemon thread; the port, or None when off.

    A port in use is logged and the worker runs on without an endpoint: metrics never stop the pipeline.
    """
    chosen = settings or MetricsSettings()
    port = stage_port(chosen, stage)
    if port is None:
        return None
    try:
        start_http_server(port, addr=chosen.host)
    except OSError as exc:
        log.error("metrics endpoint %s:%d not started (%s); the worker runs without one", chosen.host, port,
                  exc.strerror or type(exc).__name__)
        return None
    log.info("%s metrics on http://%s:%d/metrics", stage, chosen.host, port)
    return port
