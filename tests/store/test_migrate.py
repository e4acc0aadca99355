"""Feature-store migrations against the real TimescaleDB: idempotent, edition-aware, hypertables in place."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources

import psycopg
import pytest

from clinstream.core.config import Settings
from clinstream.core.db import connect, timescale_license
from clinstream.store import migrate as migrate_module
from clinstream.store.migrate import migrate

pytestmark = pytest.mark.integration

_MIGRATIONS = resources.files("clinstream.store").joinpath("migrations")
CORE = sorted(e.name for e in _MIGRATIONS.iterdir() if e.name.endswith(".sql"))
COMMUNITY = sorted(f"community/{e.name}" for e in _MIGRATIONS.joinpath("community").iterdir()
                   if e.name.endswith(".sql"))


def _schema_state(settings: Settings) -> list[tuple[object, ...]]:
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY 1, 2", (settings.db_schema,)).fetchall()
        rows += conn.execute(
            "SELECT hypertable_name, num_dimensions, 'hypertable' FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = %s", (settings.db_schema,)).fetchall()
        rows += conn.execute("SELECT name, checksum, '' FROM schema_migrations ORDER BY 1").fetchall()
    return rows


def test_migrate_twice_leaves_the_same_state(db_site: Settings) -> None:
    before = _schema_state(db_site)
    report = migrate(db_site)
    assert report.applied == []
    assert _schema_state(db_site) == before
    assert ("wearable_features", 1, "hypertable") in before


@pytest.fixture
def fresh_site(settings: Settings) -> Iterator[Settings]:
    """A site whose schema does not exist yet (migrate has not run); dropped afterwards."""
    yield settings
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def _recorded(settings: Settings) -> set[str]:
    with connect(settings) as conn:
        return {str(r[0]) for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}


def _edition(monkeypatch: pytest.MonkeyPatch, edition: str) -> None:
    monkeypatch.setattr(migrate_module, "timescale_license", lambda _conn: edition)


def test_apache_edition_applies_core_and_skips_every_community_migration(
        fresh_site: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _edition(monkeypatch, "apache")
    report = migrate(fresh_site)
    assert report.edition == "apache"
    assert report.applied == CORE
    assert report.skipped_community == COMMUNITY
    assert _recorded(fresh_site) == set(CORE)


def test_timescale_edition_runs_the_community_migrations(
        fresh_site: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(fresh_site) as conn:
        real = timescale_license(conn)
    _edition(monkeypatch, "timescale")
    if real == "timescale":
        report = migrate(fresh_site)
        assert report.applied == CORE + COMMUNITY and report.skipped_community == []
        assert _recorded(fresh_site) == set(CORE + COMMUNITY)
        return
    # An Apache-only server refuses compression: proof that the community scripts were run, not skipped,
    # and that the failed migration left nothing half-applied (one transaction).
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="apache"):
        migrate(fresh_site)
    with connect(fresh_site) as conn:
        schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (fresh_site.db_schema,)).fetchone()
    assert schema is None

