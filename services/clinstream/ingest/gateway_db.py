"""The gateway's asynchronous database access: cached credential look-ups, the LIMS event-id ledger and the
participants' time zones from LIMS consent events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from clinstream.core.config import Settings
from clinstream.ingest.credential_cache import CredentialCache, Row, listen_for_changes
from clinstream.ingest.credentials import ParsedToken, credentials_schema, matches
from clinstream.ingest.time_zones import stamped_time_zone

_DB_ERRORS = (psycopg.Error, PoolTimeout, OSError)


class DatabaseUnavailable(RuntimeError):
    """The credential store could not be reached in time; the request may be retried."""


@dataclass(frozen=True, slots=True)
class DevicePrincipal:
    """An authenticated device and the participant it is bound to."""

    key_id: str
    device_id: str
    participant_id: str
    time_zone: str | None = None  # the IANA zone stamped on every block (registration, LIMS, site default)
    max_requests_per_min: int | None = None  # None: the site default
    max_readings_per_min: int | None = None


@dataclass(frozen=True, slots=True)
class LimsPrincipal:
    """An authenticated LIMS, its limits and its scope (None: unrestricted)."""

    key_id: str
    max_requests_per_min: int | None = None
    max_events_per_min: int | None = None
    event_types: frozenset[str] | None = None  # lifecycle | assay | consent
    sample_prefixes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ParticipantZone:
    """The time zone a LIMS consent/enrolment event gave its participant."""

    participant_id: str
    time_zone: str
    occurred_at: datetime
    event_id: str


class GatewayDb:
    """A small connection pool over the site schema with the queries of the gateway."""

    def __init__(self, settings: Settings, *, max_size: int, timeout_s: float, cache_ttl_s: float,
                 lookups: Counter | None = None, default_time_zone: str | None = None) -> None:
        schema = settings.db_schema
        cred = credentials_schema(schema)
        self.database_url = settings.database_url
        self.cache = CredentialCache(cache_ttl_s) if cache_ttl_s > 0 else None
        self._lookups = lookups
        self.default_time_zone = default_time_zone
        # The participant's LIMS zone rides in the cached credential row; its changes evict that row (migration 0006).
        self._device_query = ("SELECT d.secret_sha256, d.device_id, d.participant_id, d.time_zone,"
                              " d.max_requests_per_min, d.max_readings_per_min, z.time_zone"
                              f' FROM "{cred}".device_credentials d LEFT JOIN "{cred}".participant_time_zones z'
                              " USING (participant_id) WHERE d.key_id = %s AND d.revoked_at IS NULL")
        self._zone_upsert = (f'INSERT INTO "{cred}".participant_time_zones AS t (participant_id, time_zone,'
                             " occurred_at, event_id) VALUES (%s, %s, %s, %s) ON CONFLICT (participant_id) DO UPDATE"
                             " SET time_zone = excluded.time_zone, occurred_at = excluded.occurred_at,"
                             " event_id = excluded.event_id, updated_at = now()"
                             " WHERE (excluded.occurred_at, excluded.event_id) > (t.occurred_at, t.event_id)")
        self._lims_query = ("SELECT secret_sha256, max_requests_per_min, max_events_per_min, event_types,"
                            f' sample_prefixes FROM "{cred}".lims_credentials'
                            " WHERE key_id = %s AND revoked_at IS NULL")

        async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(f'SET search_path TO "{schema}", public')

        self.timeout_s = timeout_s
        self.pool = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=max_size, open=False, configure=_configure,
            timeout=timeout_s, reconnect_timeout=3600.0, name="clinstream-gateway",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s)),
                    "options": f"-c statement_timeout={int(timeout_s * 1000)}"},
        )

    async def open(self) -> None:
        """Start the pool without waiting: the gateway starts (and reports not ready) while the DB is away."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close(timeout=2.0)

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            async with self.pool.connection(timeout=self.timeout_s) as conn:
                cur = await conn.execute(query, params)  # type: ignore[arg-type]
                return await cur.fetchall()
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from None

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            await self._fetch("SELECT 1", ())
        except DatabaseUnavailable:
            return False
        return True

    async def listen(self) -> None:
        """Keep the credential cache coherent with the database (a task for the gateway's lifetime)."""
        if self.cache is not None:
            await listen_for_changes(self.database_url, self.cache)

    async def _credential(self, table: str, query: str, token: ParsedToken) -> Row | None:
        """The active credential row of a token whose secret matches (cached), else None."""
        row = self.cache.get(table, token.key_id) if self.cache is not None else None
        if self._lookups is not None:
            self._lookups.labels("database" if row is None else "cache").inc()
        if row is None:
            generation = self.cache.generation if self.cache is not None else 0
            rows = await self._fetch(query, (token.key_id,))
            row = tuple(rows[0]) if rows else ()
            if self.cache is not None:
                self.cache.put(table, token.key_id, row, generation)
        if not row or not matches(row[0], token.key_id, token.secret):
            return None
        return row

    async def device(self, token: ParsedToken) -> DevicePrincipal | None:
        """The device of an active device token whose secret matches, else None."""
        row = await self._credential("device", self._device_query, token)
        if row is None:
            return None
        return DevicePrincipal(token.key_id, str(row[1]), str(row[2]),
                               stamped_time_zone(row[3], row[6], self.default_time_zone), row[4], row[5])

    async def lims(self, token: ParsedToken) -> LimsPrincipal | None:
        """The LIMS of an active API key whose secret matches, else None."""
        row = await self._credential("lims", self._lims_query, token)
        if row is None:
            return None
        return LimsPrincipal(token.key_id, row[1], row[2], frozenset(row[3]) if row[3] is not None else None,
                             tuple(row[4]) if row[4] is not None else None)

    async def known_events(self, event_ids: Sequence[str]) -> dict[str, bytes]:
        """Content hashes of the events among `event_ids` that were accepted before."""
        if not event_ids:
            return {}
        rows = await self._fetch("SELECT event_id, content_sha256 FROM ingest_event_ids WHERE event_id = ANY(%s)",
                                 ([UUID(e) for e in event_ids],))
        return {str(row[0]): bytes(row[1]) for row in rows}

    async def record_time_zones(self, zones: Sequence[ParticipantZone]) -> None:
        """Remember the zones of accepted consent events; per participant the latest event (occurred_at, event_id)
        wins, so arrival order and resends do not matter. Announces the change to every gateway (trigger)."""
        if not zones:
            return
        try:
            async with self.pool.connection(timeout=self.timeout_s) as conn, conn.cursor() as cur:
                await cur.executemany(self._zone_upsert, [(z.participant_id, z.time_zone, z.occurred_at,
                                                           UUID(z.event_id)) for z in zones])
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from None

    async def record_events(self, events: Sequence[tuple[str, bytes]], lims_key_id: str) -> None:
        """Remember events the broker acknowledged (an id that is already known keeps its first record)."""
        if not events:
            return
        try:
            async with self.pool.connection(timeout=self.timeout_s) as conn, conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO ingest_event_ids (event_id, content_sha256, lims_key_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    [(UUID(e), digest, lims_key_id) for e, digest in events])
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from None
