"""Structured logging set-up; log lines never carry identifiers, secrets or payloads."""

from __future__ import annotations

import logging
import os


def configure_logging(service: str, level: str | None = None) -> logging.Logger:
    """Configure the root logger once for a service process and return the service's logger."""
    lvl = (level or os.environ.get("CLINSTREAM_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(level=lvl, format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    for noisy in ("faust", "mode", "aiokafka", "kafka", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    return logging.getLogger(f"clinstream.{service}")
