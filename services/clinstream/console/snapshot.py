"""Cohort-wide aggregates of the feature store, refreshed in the background so the pages answer from memory.

Cohort completeness, wear and freshness change with DAY windows, not per request; at 10,000 participants their
queries read tens of thousands of rows, too slow to run per page view.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from clinstream.console import store_reads
from clinstream.core.constants import CONSOLE_SNAPSHOT_TIMEOUT_MS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """One read of the cohort aggregates."""

    at: float
    since: datetime | None
    people: list[dict[str, Any]]
    by_set: list[dict[str, Any]]
    fresh: list[store_reads.Freshness]
    erasures: list[dict[str, Any]]


def read_snapshot(pool: ConnectionPool[Any]) -> StoreSnapshot:
    """Run the cohort-wide queries once."""
    with pool.connection() as conn, conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {CONSOLE_SNAPSHOT_TIMEOUT_MS}")  # background: may take longer
        since = store_reads.cohort_since(conn)
        people = store_reads.cohort(conn, since) if since else []
        by_set = store_reads.completeness_by_set(conn, since) if since else []
        fresh = store_reads.freshness(conn)
        erasures = store_reads.erasures_by_day(conn)
    return StoreSnapshot(time.time(), since, people, by_set, fresh, erasures)


@dataclass
class Snapshots:
    """Keeps the newest StoreSnapshot, re-read every `interval_s` by a daemon thread."""

    pool: ConnectionPool[Any]
    interval_s: float = 30.0
    _current: StoreSnapshot | None = None
    _error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def refresh(self) -> None:
        """Read now; on failure keep the previous snapshot and remember why."""
        try:
            self._current = read_snapshot(self.pool)
            self._error = None
        except Exception as exc:  # the database may be away; pages say so
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("console store snapshot failed: %s", self._error)

    def current(self) -> tuple[StoreSnapshot | None, str | None]:
        """The newest snapshot (None before the first succeeded) and the last error."""
        return self._current, self._error

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def start(self) -> None:
        """First read now, then keep refreshing."""
        self.refresh()
        threading.Thread(target=self._run, name="console-store-snapshot", daemon=True).start()

    def stop(self) -> None:
        """End the refresh thread."""
        self._stop.set()
