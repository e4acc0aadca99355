"""Feature export against the real TimescaleDB: a day of 1,000 synthetic participants round-trips through Parquet."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.export.query import ExportFilter
from clinstream.export.tables import NotAFeatureTable, check_table
from clinstream.export.writer import ExportFormat, write_export
from clinstream.features.catalogue import HEART_RATE, names_of
from clinstream.features.windows import WindowKind
from clinstream_devtools.console.synthetic import Cohort, fill_store

pytestmark = pytest.mark.integration

DAY = datetime(2026, 3, 2, tzinfo=UTC)
CLINSTREAM = Path(sys.executable).with_name("clinstream")


@pytest.fixture(scope="module")
def cohort_site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One migrated site holding a day (plus the day before) of 1,000 synthetic participants."""
    import uuid

    from clinstream.store.migrate import migrate

    settings = Settings(site_id="t" + uuid.uuid4().hex[:10])  # type: ignore[call-arg]
    migrate(settings)
    with connect(settings) as conn:
        fill_store(conn, Cohort(participants=1000, first_day=DAY - timedelta(days=1), days=2, seed=7))
    yield settings
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def _sql_rows(settings: Settings, window: str) -> pd.DataFrame:
    """The same rows read independently: plain SQL, the jsonb values parsed in Python."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT participant_pseudonym, window_start, completeness, is_final, feature_values FROM wearable_features"
            " WHERE feature_set = %s AND window_kind = %s AND window_start >= %s AND window_start < %s",
            (HEART_RATE, window, DAY, DAY + timedelta(days=1))).fetchall()
    records = [{"participant_pseudonym": p, "window_start": ws, "completeness": c, "is_final": f,
                **{n: values.get(n) for n in names_of(HEART_RATE)}} for p, ws, c, f, values in rows]
    return pd.DataFrame.from_records(records).sort_values(["window_start", "participant_pseudonym"],
                                                          ignore_index=True)


@pytest.mark.parametrize("window", ["HOUR", "DAY"])
def test_parquet_round_trips_a_day_of_1000_participants(cohort_site: Settings, tmp_path: Path, window: str) -> None:
    f = ExportFilter(HEART_RATE, 1, WindowKind(window), DAY, DAY + timedelta(days=1))
    with connect(cohort_site) as conn:
        result = write_export(conn, f, tmp_path, ExportFormat.PARQUET)
    exported = pd.read_parquet(result.data_file).sort_values(["window_start", "participant_pseudonym"],
                                                             ignore_index=True)
    expected = _sql_rows(cohort_site, window)
    assert exported["participant_pseudonym"].nunique() == 1000
    assert len(exported) == len(expected) == 1000 * (24 if window == "HOUR" else 1) == result.rows
    for column in ("participant_pseudonym", "is_final"):
        assert exported[column].tolist() == expected[column].tolist()
    assert (exported["window_start"] == pd.to_datetime(expected["window_start"], utc=True)).all()
    for column in ("completeness", *names_of(HEART_RATE)):
        got, want = exported[column].tolist(), expected[column].tolist()
        pairs = zip(got, want, strict=True)
        assert all((g is None or math.isnan(g)) if w is None else g == w for g, w in pairs), column


def test_quality_filter_and_dictionary(cohort_site: Settings, tmp_path: Path) -> None:
    f = ExportFilter(HEART_RATE, 1, WindowKind.HOUR, DAY - timedelta(days=1), DAY + timedelta(days=1),
                     min_completeness=0.8, final_only=True)
    with connect(cohort_site) as conn:
        result = write_export(conn, f, tmp_path, ExportFormat.CSV)
        want = conn.execute("SELECT count(*) FROM wearable_features WHERE feature_set = 'heart_rate'"
                            " AND window_kind = 'HOUR' AND completeness >= 0.8 AND is_final").fetchone()
    exported = pd.read_csv(result.data_file)
    assert want is not None and 0 < len(exported) == want[0]
    assert exported["is_final"].all() and (exported["completeness"] >= 0.8).all()
    doc = json.loads(result.dictionary_file.read_text())
    columns = {c["column"]: c for c in doc["columns"]}
    assert list(columns) == list(exported.columns)
    assert columns["mean"]["unit"] == "/min" and columns["mean"]["loinc"] == "8867-4"
    assert columns["completeness"]["quality_flag"] and columns["is_final"]["quality_flag"]
    assert all(c["definition"] for c in doc["columns"])


@pytest.mark.parametrize("table", ["device_credentials", "lims_credentials", "erasure_audit", "pg_authid"])
def test_tables_outside_the_feature_store_are_refused(table: str, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(NotAFeatureTable):
        check_table(table)
    done = subprocess.run([str(CLINSTREAM), "export", "-s", HEART_RATE, "-o", str(tmp_path), "--table", table],
                          capture_output=True, text=True, env={"CLINSTREAM_SITE_ID": settings.site_id,
                                                               "PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 2 and "not a feature-store table" in done.stderr
    assert not list(tmp_path.iterdir())


def test_unknown_feature_set_is_refused() -> None:
    with pytest.raises(NotAFeatureTable, match="not in the catalogue"):
        ExportFilter("device_credentials", 1)
