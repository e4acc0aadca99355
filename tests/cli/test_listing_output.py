"""Every listing command run for real (`clinstream ...` as a subprocess, stdout a pipe, against the real stack) in
each `--output` format: tables keep key columns whole and say why a cell is empty, JSON is a list of objects with
stable keys, CSV has a header."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import ALL_TOPICS
from clinstream.features.catalogue import CATALOGUE
from clinstream.ingest.credentials import credentials_schema

CLINSTREAM = Path(sys.executable).with_name("clinstream")
ROOT = Path(__file__).resolve().parents[2]
NARROW = 60  # $COLUMNS of the runs: narrower than every table, so only key columns may widen it
LONG_DEVICE = "DEVICE-WITH-A-LONG-SERIAL-" + "0" * 30 + "1"

DEVICE_KEYS = ["key_id", "device_id", "participant_id", "created_at", "revoked_at", "time_zone"]
LIMS_KEYS = ["key_id", "lims_name", "created_at", "revoked_at", "event_types", "sample_prefixes"]
TOPIC_KEYS = ["topic", "partitions", "policy", "retention_days", "value_schema", "doc"]
FEATURE_KEYS = ["feature_set", "name", "unit", "windows", "version", "loinc", "definition", "citation"]


def clinstream(settings: Settings, *args: str, check: bool = True,
               columns: int | None = NARROW) -> subprocess.CompletedProcess[str]:
    """Run the real command from the worktree root (its .env: this stack) for the test site, stdout piped;
    columns None: no $COLUMNS (the piped default width)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"CLINSTREAM_SITE_ID": settings.site_id}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([str(CLINSTREAM), *args], capture_output=True, text=True, env=env, check=check, cwd=ROOT,
                          timeout=120)


def as_json(settings: Settings, *args: str) -> list[dict[str, Any]]:
    document = json.loads(clinstream(settings, *args, "--output", "json").stdout)
    assert isinstance(document, list)
    return document


def as_csv(settings: Settings, *args: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(clinstream(settings, *args, "--output", "csv").stdout))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def table_lines(table: str, needle: str) -> list[str]:
    """The table lines that hold needle whole (a folded key would be split over lines)."""
    lines = [line for line in table.splitlines() if needle in line]
    assert lines, f"{needle!r} is not whole on one line of:\n{table}"
    return lines


def table_line(table: str, needle: str) -> str:
    """The one table line that holds needle whole."""
    lines = table_lines(table, needle)
    assert len(lines) == 1, f"{needle!r} is on more than one line of:\n{table}"
    return lines[0]


@pytest.fixture
def credential_site(db_site: Settings) -> Iterator[Settings]:
    """A migrated site with a device (long serial), a revoked device and a LIMS key scoped to assay events,
    registered through the real commands; its credential schema is dropped afterwards."""
    clinstream(db_site, "devices", "register", "--device-id", LONG_DEVICE, "--participant", "P-000101")
    clinstream(db_site, "devices", "register", "--device-id", "DEV-REVOKED", "--participant", "P-000102")
    clinstream(db_site, "devices", "revoke", "--device-id", "DEV-REVOKED")
    clinstream(db_site, "lims", "register-key", "lims-main", "--event-type", "assay")
    yield db_site
    with connect(db_site, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{credentials_schema(db_site.db_schema)}" CASCADE')


@pytest.mark.integration
def test_devices_list_in_every_format(credential_site: Settings) -> None:
    table = clinstream(credential_site, "devices", "list").stdout
    line = table_line(table, LONG_DEVICE)
    assert "P-000101" in line and "(active)" in line and "…" not in table
    assert "DEV-REVOKED" not in table
    wide = clinstream(credential_site, "devices", "list", columns=400).stdout
    assert "(from LIMS consent, else site default)" in table_line(wide, LONG_DEVICE)
    listed = as_json(credential_site, "devices", "list", "--all")
    assert all(list(row) == DEVICE_KEYS for row in listed)
    by_device = {row["device_id"]: row for row in listed}
    assert set(by_device) == {LONG_DEVICE, "DEV-REVOKED"}
    assert by_device[LONG_DEVICE]["revoked_at"] is None and by_device["DEV-REVOKED"]["revoked_at"]
    assert by_device[LONG_DEVICE]["participant_id"] == "P-000101" and by_device[LONG_DEVICE]["time_zone"] is None
    header, rows = as_csv(credential_site, "devices", "list")
    assert header == DEVICE_KEYS
    assert [(r["device_id"], r["participant_id"], r["revoked_at"]) for r in rows] == [(LONG_DEVICE, "P-000101", "")]
    assert rows[0]["key_id"] == by_device[LONG_DEVICE]["key_id"]


@pytest.mark.integration
def test_lims_list_keys_in_every_format(credential_site: Settings) -> None:
    table = clinstream(credential_site, "lims", "list-keys").stdout
    line = table_line(table, "lims-main")
    assert "assay" in line and "(all)" in line and "(active)" in line
    listed = as_json(credential_site, "lims", "list-keys")
    assert [list(row) for row in listed] == [LIMS_KEYS]
    assert listed[0]["event_types"] == ["assay"] and listed[0]["sample_prefixes"] is None
    header, rows = as_csv(credential_site, "lims", "list-keys")
    assert header == LIMS_KEYS
    assert len(rows) == 1 and json.loads(rows[0]["event_types"]) == ["assay"] and rows[0]["sample_prefixes"] == ""


@pytest.mark.integration
def test_an_empty_listing_says_why(db_site: Settings) -> None:
    out = clinstream(db_site, "devices", "list").stdout
    assert "No device credentials are active (--all shows revoked ones)." in out
    assert as_json(db_site, "devices", "list") == []
    assert as_csv(db_site, "lims", "list-keys") == (LIMS_KEYS, [])


def test_topics_list_in_every_format(settings: Settings) -> None:
    names = [spec.name(settings.site_id) for spec in ALL_TOPICS]
    table = clinstream(settings, "topics", "list").stdout
    for name in names:
        table_line(table, name)
    forever = [s for s in ALL_TOPICS if s.retention_ms < 0]
    assert forever, "the catalogue keeps some topic forever (consent state)"
    assert "forever" in table_line(table, forever[0].name(settings.site_id))
    listed = as_json(settings, "topics", "list")
    assert [row["topic"] for row in listed] == names and all(list(row) == TOPIC_KEYS for row in listed)
    kept = {row["topic"]: row["retention_days"] for row in listed}
    assert all(kept[s.name(settings.site_id)] is None for s in forever)
    assert all(isinstance(days, int | float) and days > 0 for days in kept.values() if days is not None)
    header, rows = as_csv(settings, "topics", "list")
    assert header == TOPIC_KEYS and [r["topic"] for r in rows] == names


def test_features_catalogue_in_every_format(settings: Settings) -> None:
    table = clinstream(settings, "features", "catalogue").stdout
    per_sample = [d for d in CATALOGUE if not d.windows]
    assert per_sample, "the catalogue has per-sample (biobank) features"
    for d in CATALOGUE:  # set and name stand whole on the feature's row (one row per version)
        rows = re.findall(rf"^│ {re.escape(d.feature_set)} +│ {re.escape(d.name)} +│.*$", table, re.MULTILINE)
        assert len(rows) == sum(1 for e in CATALOGUE if (e.feature_set, e.name) == (d.feature_set, d.name))
    wide = clinstream(settings, "features", "catalogue", columns=1000).stdout
    for d in CATALOGUE:
        rows = re.findall(rf"^│ {re.escape(d.feature_set)} +│ {re.escape(d.name)} +│.*$", wide, re.MULTILINE)
        assert rows and all(("(per sample)" in row) == (d in per_sample) for row in rows)
    assert "…" not in table
    listed = as_json(settings, "features", "catalogue")
    assert all(list(row) == FEATURE_KEYS for row in listed)
    assert [(r["feature_set"], r["name"], r["version"]) for r in listed] == \
        [(d.feature_set, d.name, d.version) for d in CATALOGUE]
    assert all(r["windows"] == [w.value for w in d.windows] for r, d in zip(listed, CATALOGUE, strict=True))
    header, rows = as_csv(settings, "features", "catalogue")
    assert header == FEATURE_KEYS and len(rows) == len(CATALOGUE)
    assert [r["loinc"] for r in rows] == [d.loinc or "" for d in CATALOGUE]


@pytest.mark.integration
def test_lims_import_reports_in_every_format(kafka_site: Settings, db_site: Settings, tmp_path: Path) -> None:
    good = {"event_id": str(uuid.uuid4()), "participant_id": "P-000201", "occurred_at": "2026-11-02T08:00:00Z",
            "kind": "assay", "sample_id": "SMP-201-1-A1", "analyte": "CRP", "loinc_code": "1988-5", "value": "4.2",
            "unit": "mg/L"}
    bad = {**good, "event_id": str(uuid.uuid4()), "value": "high"}
    path = tmp_path / "lims.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(good))
        writer.writeheader()
        writer.writerows([good, bad])
    first = clinstream(db_site, "lims", "import", str(path), "--output", "json", check=False)
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert (report["rows"], report["accepted"], report["duplicates"]) == (2, 1, 0)
    assert [(r["row"], r["event_id"]) for r in report["rejected"]] == [(2, bad["event_id"])]  # 1-based data row
    assert report["rejected"][0]["field"] and report["rejected"][0]["reason"]
    again = clinstream(db_site, "lims", "import", str(path), "--output", "csv", check=False)
    assert again.returncode == 1
    rows = list(csv.DictReader(io.StringIO(again.stdout)))
    assert [r["event_id"] for r in rows] == [bad["event_id"]] and rows[0]["field"] == report["rejected"][0]["field"]
    table = clinstream(db_site, "lims", "import", str(path), check=False).stdout
    assert "2 rows: 0 accepted, 1 already imported, 1 rejected" in table
    assert rows[0]["field"] in table_line(table, bad["event_id"])
    dead = as_json(db_site, "dlq", "list", "--stage", "ingest", "--records")
    assert len(dead) == 3 and {d["field_path"] for d in dead} == {rows[0]["field"]}  # one per import
    header, groups = as_csv(db_site, "dlq", "list", "--stage", "ingest")
    assert header[:2] == ["reason", "field_path"] and [g["records"] for g in groups] == ["3"]
    view = json.loads(clinstream(db_site, "dlq", "show", dead[0]["position"], "--stage", "ingest", "--output",
                                 "json").stdout)
    assert isinstance(view, dict) and view["reason"] == dead[0]["reason"]
    header, fields = as_csv(db_site, "dlq", "show", dead[0]["position"], "--stage", "ingest")
    assert header == ["field", "value"] and {f["field"]: f["value"] for f in fields}["reason"] == view["reason"]
    assert dead[0]["position"] in clinstream(db_site, "dlq", "show", dead[0]["position"], "--stage", "ingest").stdout
