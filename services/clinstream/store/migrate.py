"""Applies the versioned SQL migrations of the feature store to a site's schema, idempotently."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry, timescale_license

_LOCK_ID = 0x636C696E  # 'clin'


@dataclass
class MigrationReport:
    """What `migrate` did."""

    schema: str
    edition: str
    applied: list[str]
    skipped_community: list[str]


def _scripts(folder: str) -> list[tuple[str, str]]:
    root = resources.files("clinstream.store").joinpath("migrations")
    if folder:
        root = root.joinpath(folder)
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            out.append((f"{folder + '/' if folder else ''}{entry.name}", entry.read_text(encoding="utf-8")))
    return out


def migrate(settings: Settings) -> MigrationReport:
    """Create the site schema and apply every pending migration; community-only ones only where supported."""
    conn: psycopg.Connection[Any]
    with connect_with_retry(settings, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.db_schema}"')
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT name, checksum FROM schema_migrations")
            done = {str(r[0]): str(r[1]) for r in cur.fetchall()}
            edition = timescale_license(conn)
            applied: list[str] = []
            skipped: list[str] = []
            scripts = _scripts("")
            community = _scripts("community")
            for name, sql in [*scripts, *community]:
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if name in done:
                    if done[name] != checksum:
                        raise RuntimeError(f"migration {name} changed after it was applied; add a new one instead")
                    continue
                if name.startswith("community/") and edition != "timescale":
                    skipped.append(name)
                    continue
                cur.execute(sql)  # type: ignore[arg-type]
                cur.execute("INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (name, checksum))
                applied.append(name)
        conn.commit()
    return MigrationReport(settings.db_schema, edition, applied, skipped)
