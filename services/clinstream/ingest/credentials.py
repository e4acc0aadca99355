"""Device and LIMS credentials: token format, hashing, and the admin operations behind `clinstream devices|lims`.

A token is `<prefix>_<key id>.<secret>`: the key id is public and random (it is not the device serial, so a token
in a log line would not name a device), the secret is 256 random bits. Only SHA-256(domain, key id, secret) is
stored. A fast hash is sound here because the secret is random and long; argon2 protects low-entropy passwords
and would cost milliseconds per request for nothing. The credentials live in the schema `cred_<site>` (not in the
feature store's `site_<site>`); the gateway caches them and drops a cached one when the database announces a change
(see credential_cache.py), so a revocation takes effect at once on every gateway process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from clinstream.core.constants import (
    DEVICE_TOKEN_PREFIX,
    INGEST_CREDENTIAL_SCHEMA_PREFIX,
    INGEST_TOKEN_SECRET_BYTES,
    LIMS_TOKEN_PREFIX,
)
from clinstream.ingest.time_zones import is_iana_zone

_DOMAIN = b"clinstream-credential-v1\x00"
_TOKEN_RE = re.compile(r"^(csd|csl)_([0-9a-f]{16})\.([A-Za-z0-9_-]{32,128})$")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
PARTICIPANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LIMS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")
SAMPLE_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,31}$")
# LIMS event types a key may be scoped to, and the payload kind of each.
LIMS_EVENT_TYPES: dict[str, str] = {"lifecycle": "sample", "assay": "assay", "consent": "consent"}


class CredentialError(ValueError):
    """An admin operation that cannot be done (bad id, device already has an active credential...)."""


def credentials_schema(site_schema: str) -> str:
    """The schema of a site's credentials: site_<id> -> cred_<id>."""
    return INGEST_CREDENTIAL_SCHEMA_PREFIX + site_schema.removeprefix("site_")


def _table(conn: psycopg.Connection[Any], name: str) -> sql.Identifier:
    """A credential table of the connection's site (its search_path starts with the site schema)."""
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise CredentialError("the site schema does not exist; run `clinstream db migrate` first")
    return sql.Identifier(credentials_schema(str(row[0])), name)


@dataclass(frozen=True)
class ParsedToken:
    """The parts of a presented token."""

    prefix: str
    key_id: str
    secret: str


@dataclass(frozen=True)
class IssuedToken:
    """A new credential: the token is shown once and never stored."""

    key_id: str
    token: str


def secret_hash(key_id: str, secret: str) -> bytes:
    """The stored form of a secret."""
    return hashlib.sha256(_DOMAIN + key_id.encode() + b"\x00" + secret.encode()).digest()


def matches(stored: bytes, key_id: str, secret: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(bytes(stored), secret_hash(key_id, secret))


def parse_token(token: str) -> ParsedToken | None:
    """The parts of a well-formed token, else None."""
    found = _TOKEN_RE.match(token)
    if not found:
        return None
    return ParsedToken(found.group(1), found.group(2), found.group(3))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def new_token(prefix: str) -> tuple[IssuedToken, bytes]:
    """A fresh token and the hash to store."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(INGEST_TOKEN_SECRET_BYTES)
    return IssuedToken(key_id, f"{prefix}_{key_id}.{secret}"), secret_hash(key_id, secret)


@dataclass(frozen=True)
class DeviceRow:
    """One row of `clinstream devices list`."""

    key_id: str
    device_id: str
    participant_id: str
    created_at: datetime
    revoked_at: datetime | None
    time_zone: str | None


@dataclass(frozen=True)
class LimsRow:
    """One row of `clinstream lims list-keys`."""

    key_id: str
    lims_name: str
    created_at: datetime
    revoked_at: datetime | None
    event_types: list[str] | None
    sample_prefixes: list[str] | None


def valid_time_zone(name: str) -> str:
    """An IANA time zone name of the tz database (e.g. Europe/Berlin), else CredentialError."""
    if not is_iana_zone(name):
        raise CredentialError("time zone: an IANA name such as Europe/Berlin")
    return name


def _positive(value: int | None, what: str) -> int | None:
    if value is not None and value <= 0:
        raise CredentialError(f"{what} must be positive")
    return value


def register_device(conn: psycopg.Connection[Any], device_id: str, participant_id: str, *,
                    time_zone: str | None = None, max_requests_per_min: int | None = None,
                    max_readings_per_min: int | None = None) -> IssuedToken:
    """Issue a credential binding a device to one participant; refused while the device has an active one.

    `time_zone` is the participant's IANA zone for this device (it wins over a LIMS zone and the site default, see
    time_zones.py); the limits override the site's defaults for this credential.
    """
    if not DEVICE_ID_RE.match(device_id):
        raise CredentialError("device id: letters, digits and . _ : - only (max 64)")
    if not PARTICIPANT_ID_RE.match(participant_id):
        raise CredentialError("participant id: letters, digits and . _ - only (max 64)")
    if time_zone is not None:
        valid_time_zone(time_zone)
    _positive(max_requests_per_min, "max requests per minute")
    _positive(max_readings_per_min, "max readings per minute")
    issued, digest = new_token(DEVICE_TOKEN_PREFIX)
    # ON CONFLICT: an active device is refused without a unique violation, whose server log line (DETAIL: Key
    # (device_id)=(...) already exists) would put the serial into the PostgreSQL log.
    with conn.transaction():
        cur = conn.execute(sql.SQL("INSERT INTO {} (key_id, secret_sha256, device_id, participant_id, time_zone,"
                                   " max_requests_per_min, max_readings_per_min) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                                   " ON CONFLICT (device_id) WHERE revoked_at IS NULL DO NOTHING").format(
                                       _table(conn, "device_credentials")),
                           (issued.key_id, digest, device_id, participant_id, time_zone, max_requests_per_min,
                            max_readings_per_min))
        if cur.rowcount != 1:
            raise CredentialError("the device already has an active credential; revoke it first")
    return issued


def revoke_devices(conn: psycopg.Connection[Any], *, key_id: str | None = None, device_id: str | None = None,
                   participant_id: str | None = None) -> int:
    """Revoke the active credentials matching a key id, a device or a participant; returns how many."""
    if [key_id, device_id, participant_id].count(None) != 2:
        raise CredentialError("give exactly one of key id, device id or participant id")
    column, value = next((c, v) for c, v in (("key_id", key_id), ("device_id", device_id),
                                              ("participant_id", participant_id)) if v is not None)
    with conn.transaction():
        cur = conn.execute(sql.SQL("UPDATE {} SET revoked_at = now() WHERE {} = %s AND revoked_at IS NULL").format(
            _table(conn, "device_credentials"), sql.Identifier(column)), (value,))
        return cur.rowcount


def list_devices(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[DeviceRow]:
    """Device credentials, newest first."""
    where = sql.SQL("" if include_revoked else " WHERE revoked_at IS NULL")
    rows = conn.execute(sql.SQL("SELECT key_id, device_id, participant_id, created_at, revoked_at, time_zone FROM {}{}"
                                " ORDER BY created_at DESC, key_id").format(_table(conn, "device_credentials"),
                                                                            where)).fetchall()
    return [DeviceRow(*row) for row in rows]


def _scope(event_types: Sequence[str] | None, sample_prefixes: Sequence[str] | None
           ) -> tuple[list[str] | None, list[str] | None]:
    if event_types is not None:
        unknown = sorted(set(event_types) - set(LIMS_EVENT_TYPES))
        if unknown or not event_types:
            raise CredentialError("event types: one or more of " + ", ".join(LIMS_EVENT_TYPES))
    if sample_prefixes is not None and (not sample_prefixes or not all(
            SAMPLE_PREFIX_RE.match(p) for p in sample_prefixes)):
        raise CredentialError("sample-type prefixes: letters, digits and . _ : / - only (max 32)")
    return (sorted(set(event_types)) if event_types is not None else None,
            sorted(set(sample_prefixes)) if sample_prefixes is not None else None)


def register_lims(conn: psycopg.Connection[Any], lims_name: str, *, event_types: Sequence[str] | None = None,
                  sample_prefixes: Sequence[str] | None = None, max_requests_per_min: int | None = None,
                  max_events_per_min: int | None = None) -> IssuedToken:
    """Issue an API key for one LIMS instance, optionally scoped to event types and sample-type prefixes."""
    if not LIMS_NAME_RE.match(lims_name):
        raise CredentialError("LIMS name: letters, digits, spaces and . _ - only (max 64)")
    types, prefixes = _scope(event_types, sample_prefixes)
    _positive(max_requests_per_min, "max requests per minute")
    _positive(max_events_per_min, "max events per minute")
    issued, digest = new_token(LIMS_TOKEN_PREFIX)
    with conn.transaction():
        conn.execute(sql.SQL("INSERT INTO {} (key_id, secret_sha256, lims_name, event_types, sample_prefixes,"
                             " max_requests_per_min, max_events_per_min) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(
            _table(conn, "lims_credentials")), (issued.key_id, digest, lims_name, types, prefixes,
                                                max_requests_per_min, max_events_per_min))
    return issued


def scope_lims(conn: psycopg.Connection[Any], key_id: str, *, event_types: Sequence[str] | None,
               sample_prefixes: Sequence[str] | None) -> int:
    """Set (None: lift) an active LIMS key's scope; returns 1 if the key is active. Gateways apply it at once."""
    types, prefixes = _scope(event_types, sample_prefixes)
    with conn.transaction():
        cur = conn.execute(sql.SQL("UPDATE {} SET event_types = %s, sample_prefixes = %s WHERE key_id = %s"
                                   " AND revoked_at IS NULL").format(_table(conn, "lims_credentials")),
                           (types, prefixes, key_id))
        return cur.rowcount


def revoke_lims(conn: psycopg.Connection[Any], key_id: str) -> int:
    """Revoke one LIMS API key; returns 1 if it was active."""
    with conn.transaction():
        cur = conn.execute(sql.SQL("UPDATE {} SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL").format(
            _table(conn, "lims_credentials")), (key_id,))
        return cur.rowcount


def list_lims(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[LimsRow]:
    """LIMS API keys, newest first."""
    where = sql.SQL("" if include_revoked else " WHERE revoked_at IS NULL")
    rows = conn.execute(sql.SQL("SELECT key_id, lims_name, created_at, revoked_at, event_types, sample_prefixes"
                                " FROM {}{}"
                                " ORDER BY created_at DESC, key_id").format(_table(conn, "lims_credentials"),
                                                                            where)).fetchall()
    return [LimsRow(*row) for row in rows]
