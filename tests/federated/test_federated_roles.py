"""The ClientApp's database role: PostgreSQL itself lets it read the site's feature tables and views, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from federated_harness import drop_sites, new_sites
from psycopg import errors

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.federated.roles import (
    FEATURE_RELATIONS,
    connect_reader,
    ensure_reader_role,
    privilege_violations,
    reader_url,
)
from clinstream.store.migrate import migrate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_sites() -> Iterator[tuple[Settings, Settings]]:
    mine, other = new_sites("mine", "other")
    try:
        for site in (mine, other):
            migrate(site)
            ensure_reader_role(site)
        ensure_reader_role(mine)  # idempotent
        yield mine, other
    finally:
        drop_sites([mine, other])


def _reader(site: Settings) -> psycopg.Connection[object]:
    return connect_reader(site.site_id, reader_url(site.database_url, site.site_id))


def test_reader_reads_the_feature_tables_and_views(two_sites: tuple[Settings, Settings]) -> None:
    mine, _ = two_sites
    with _reader(mine) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (f"fl_reader_{mine.site_id.replace('-', '_')}",)
        for relation in FEATURE_RELATIONS:
            assert conn.execute(f"SELECT count(*) FROM {relation}").fetchone() == (0,)
        assert privilege_violations(conn, mine.site_id) == []


@pytest.mark.parametrize("table", ["erasure_audit", "schema_migrations", "erased_participants", "active_version",
                                   "feature_catalogue"])
def test_reader_is_refused_on_non_feature_tables(two_sites: tuple[Settings, Settings], table: str) -> None:
    mine, _ = two_sites
    with _reader(mine) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SELECT * FROM {table}")


def test_reader_is_refused_on_another_sites_schema(two_sites: tuple[Settings, Settings]) -> None:
    mine, other = two_sites
    with _reader(mine) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f'SELECT * FROM "{other.db_schema}".wearable_features')


def test_reader_cannot_write_even_in_a_read_write_transaction(two_sites: tuple[Settings, Settings]) -> None:
    mine, _ = two_sites
    with _reader(mine) as conn:
        with pytest.raises(errors.ReadOnlySqlTransaction):  # the role's default
            conn.execute("DELETE FROM wearable_features")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        with pytest.raises(errors.InsufficientPrivilege):  # and no privilege either
            conn.execute("DELETE FROM wearable_features")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE leak (x int)")


def test_the_owner_role_is_reported_as_too_broad(two_sites: tuple[Settings, Settings]) -> None:
    mine, _ = two_sites
    with connect(mine, autocommit=True) as conn:
        violations = privilege_violations(conn, mine.site_id)
    assert "reads erasure_audit" in violations and "writes wearable_features" in violations


def test_reader_url_drops_the_password_and_names_the_role() -> None:
    url = reader_url("postgresql://owner:secret@db.example:5432/clinstream?sslmode=require", "site-x")
    assert "secret" not in url and "owner" not in url
    assert "user=fl_reader_site_x" in url and "sslmode=require" in url and "dbname=clinstream" in url
