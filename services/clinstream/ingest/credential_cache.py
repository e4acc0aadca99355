"""The gateway's credential cache: rows looked up by key id, dropped when PostgreSQL announces a change.

A revocation is an UPDATE of a credential row; a trigger (migration 0004) announces its key id with NOTIFY, and
every gateway process LISTENs and drops that key id at once. While the listening connection is down nothing is
cached (every request looks its credential up, as before), and when it is back the cache starts empty, so a missed
announcement can never keep a revoked credential alive. Entries also expire after a TTL, a fallback only.
A look-up that raced with an announcement of its own key id is not cached: the cache counts announcements (its
generation) and remembers the generation of each key id's latest one; a row fetched before it, or before the last
reset, is used once and forgotten. Announcements of other key ids (a site registering devices or updating time
zones) do not keep the rest of the cache cold.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from cachetools import TTLCache

from clinstream.core.constants import INGEST_CREDENTIAL_CHANNEL

log = logging.getLogger("clinstream.ingest.credential_cache")
Row = tuple[Any, ...]
CACHE_MAX_ENTRIES = 200_000  # key ids; unknown ids are cached too (a hammering bad token costs no DB read)


class CredentialCache:
    """Rows of credential look-ups by (table, key id); empty tuple: no active credential with that key id."""

    def __init__(self, ttl_s: float, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self._rows: TTLCache[tuple[str, str], Row] = TTLCache(maxsize=max_entries, ttl=ttl_s)
        self._max_entries = max_entries
        self._announced: dict[str, int] = {}  # key id -> generation of its latest announcement (since `_floor`)
        self._floor = 0  # rows fetched before this generation are never cached
        self.generation = 0
        self.listening = False

    def get(self, table: str, key_id: str) -> Row | None:
        """The cached row (or empty tuple for a known miss), None if not cached."""
        if not self.listening:
            return None
        return self._rows.get((table, key_id))

    def put(self, table: str, key_id: str, row: Row, generation: int) -> None:
        """Cache a row fetched when the generation was `generation` (ignored if its key id was announced since, or
        the cache was reset since)."""
        if self.listening and generation >= self._floor and self._announced.get(key_id, 0) <= generation:
            self._rows[(table, key_id)] = row

    def evict(self, key_id: str) -> None:
        """Forget every row of a key id (an announced change)."""
        self.generation += 1
        if len(self._announced) >= self._max_entries:  # bounded: forget the record, refuse every fetch in flight
            self._announced.clear()
            self._floor = self.generation
        self._announced[key_id] = self.generation
        for table in ("device", "lims"):
            self._rows.pop((table, key_id), None)

    def reset(self, *, listening: bool) -> None:
        """Forget everything (the listener connected or was lost)."""
        self.generation += 1
        self._floor = self.generation
        self._announced.clear()
        self._rows.clear()
        self.listening = listening

    def __len__(self) -> int:
        return len(self._rows)


async def listen_for_changes(database_url: str, cache: CredentialCache, *, retry_s: float = 1.0,
                             listening: asyncio.Event | None = None) -> None:
    """LISTEN for credential changes and evict them, forever; reconnects (with the cache off) when the DB is away."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True,
                                                             connect_timeout=5) as conn:
                await conn.execute(f"LISTEN {INGEST_CREDENTIAL_CHANNEL}")
                cache.reset(listening=True)
                if listening is not None:
                    listening.set()
                async for notice in conn.notifies():
                    cache.evict(notice.payload)
        except (psycopg.Error, OSError) as exc:
            if cache.listening:
                log.warning("credential change listener lost (%s); caching off until it is back",
                            type(exc).__name__)
        finally:
            cache.reset(listening=False)
            if listening is not None:
                listening.clear()
        await asyncio.sleep(retry_s)
