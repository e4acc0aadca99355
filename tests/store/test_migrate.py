"""Feature-store migrations against the real TimescaleDB: idempotent, edition-aware, hypertables in place."""

from __future__ import annotations

import pytest

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.store.migrate import migrate

pytestmark = pytest.mark.integration


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


def test_edition_is_detected_and_community_migrations_degrade(db_site: Settings) -> None:
    report = migrate(db_site)
    assert report.edition in ("apache", "timescale")
    with connect(db_site) as conn:
        done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
    community = {n for n in done if n.startswith("community/")}
    if report.edition == "apache":
        assert community == set()
        assert report.skipped_community


def test_time_bucket_reads_back_a_feature_row(db_site: Settings) -> None:
    with connect(db_site) as conn:
        conn.execute(
            "INSERT INTO wearable_features (participant_pseudonym, feature_set, window_kind, window_start,"
            " window_end, version, feature_values, completeness, is_final, revision, computed_at)"
            " VALUES ('ab12', 'heart_rate', 'MINUTE', '2026-01-05 10:07:00+00', '2026-01-05 10:08:00+00', 1,"
            " '{\"mean\": 61.5}', 1.0, false, 1, now())")
        row = conn.execute(
            "SELECT time_bucket('1 hour', window_start) AS b, avg((feature_values->>'mean')::float)"
            " FROM wearable_features GROUP BY b").fetchone()
        conn.commit()
    assert row is not None
    assert str(row[0]).startswith("2026-01-05 10:00:00") and row[1] == 61.5
