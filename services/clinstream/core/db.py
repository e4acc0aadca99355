"""PostgreSQL connections to the site's feature store, with retries while the database is away."""

from __future__ import annotations

from typing import Any

import psycopg
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from clinstream.core.config import Settings

TRANSIENT_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


def connect(settings: Settings, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection whose search_path is the site's schema, then public (TimescaleDB lives there)."""
    conn = psycopg.connect(settings.database_url, autocommit=autocommit, connect_timeout=5, **kwargs)
    with conn.cursor() as cur:
        cur.execute(f'SET search_path TO "{settings.db_schema}", public')
    if not autocommit:
        conn.commit()
    return conn


def connect_with_retry(settings: Settings, *, max_wait_s: float = 120.0, **kwargs: Any) -> psycopg.Connection[Any]:
    """`connect`, retried with exponential back-off while the database is unreachable."""

    @retry(retry=retry_if_exception_type(TRANSIENT_DB_ERRORS), stop=stop_after_delay(max_wait_s),
           wait=wait_exponential(multiplier=0.2, max=5.0), reraise=True)
    def _attempt() -> psycopg.Connection[Any]:
        return connect(settings, **kwargs)

    return _attempt()


def timescale_license(conn: psycopg.Connection[Any]) -> str:
    """The TimescaleDB edition: 'apache' (hypertables, time_bucket) or 'timescale' (community features too)."""
    with conn.cursor() as cur:
        cur.execute("SHOW timescaledb.license")
        row = cur.fetchone()
    return str(row[0]) if row else "apache"
