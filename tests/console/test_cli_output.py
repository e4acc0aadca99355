"""Listing output without a TTY: key columns whole, empty cells explained, json and csv parse; `clinstream lag`
against the real broker."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from console_harness import CLINSTREAM, simulate_activity

from clinstream.core.cli_output import Column, OutputFormat, emit
from clinstream.core.config import Settings

LONG = "clinstream-site-with-a-long-name-features-replay-20261130-abcdef"
COLUMNS = (Column("group", "group", key_column=True), Column("state", "state", empty="(not reported)"),
           Column("lag", "lag", right=True))


def test_table_without_tty_keeps_key_columns_whole(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # the piped width (narrower: the reason wraps between its words)
    emit([{"group": LONG, "state": None, "lag": 12345}] * 3, COLUMNS, OutputFormat.TABLE, title="groups")
    out = capsys.readouterr().out
    assert LONG in out and "…" not in out
    assert "(not reported)" in out and "12,345" in out


def test_json_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"group": LONG, "state": None, "lag": 7}]
    emit(rows, COLUMNS, OutputFormat.JSON)
    assert json.loads(capsys.readouterr().out) == rows
    emit(rows, COLUMNS, OutputFormat.CSV)
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert parsed == [{"group": LONG, "state": "", "lag": "7"}]


def test_empty_listing_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    emit([], COLUMNS, OutputFormat.TABLE, title="groups", empty="No consumer group yet.")
    assert "No consumer group yet." in capsys.readouterr().out


def _lag(settings: Settings, *args: str) -> str:
    env = {**os.environ, "CLINSTREAM_SITE_ID": settings.site_id}
    done = subprocess.run([str(CLINSTREAM), "lag", *args], capture_output=True, text=True, env=env, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    return done.stdout


@pytest.mark.integration
def test_lag_reads_well_without_a_tty(kafka_site: Settings, db_site: Settings) -> None:
    simulate_activity(kafka_site, records=20)
    site = kafka_site.site_id
    table = _lag(kafka_site, "--all")
    for stage in ("features", "store"):
        assert f"clinstream-{site}-{stage}" in table
    assert "…" not in table and "(all)" not in table
    assert "pseudo.telemetry" in table and "total of" in table
    rows = list(csv.DictReader(io.StringIO(_lag(kafka_site, "--all", "--output", "csv"))))
    assert {r["stage"] for r in rows} == {"features", "store"}
    assert all(r["state"] for r in rows) and all(r["topic"] for r in rows)
    doc = json.loads(_lag(kafka_site, "--output", "json"))
    assert {g["group"] for g in doc["groups"]} == {f"clinstream-{site}-features", f"clinstream-{site}-store"}
