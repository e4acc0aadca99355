"""LIMS intake against the real broker and database: idempotent resends, conflicts, CSV import, credential CLIs."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import assay_event, auth, now_ms, read_topic
from typer.testing import CliRunner

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.db import connect
from clinstream.core.topics import RAW_BIOBANK, Stage, dlq
from clinstream.ingest.credentials import credentials_schema
from clinstream_devtools.simulate.telemetry import iso_ms

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def _events_on_topic(ingest_site) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in read_topic(ingest_site.settings, RAW_BIOBANK.name(ingest_site.settings.site_id)):
        decoded = get_codec().decode(rec.value)
        decoded["_key"] = rec.key
        out.setdefault(str(decoded["event_id"]), []).append(decoded)
    return out


def _post(gateway: TestClient, token: str, *events: dict) -> tuple[int, dict]:
    r = gateway.post("/v1/biobank/events", content=orjson.dumps({"events": list(events)}), headers=auth(token))
    return r.status_code, r.json()


def test_resends_are_idempotent(gateway: TestClient, ingest_site) -> None:
    consent = {"event_id": str(uuid.uuid4()), "participant_id": "P-000001", "occurred_at": iso_ms(now_ms() - HOUR),
               "operator_name": "Tech Synthetica", "operator_role": "technician",
               "payload": {"kind": "consent", "action": "GRANT", "status": "ACTIVE", "scope": ["DUO:0000042"],
                           "participant_name": "Testa Synthetica", "birth_date": "1970-05-17",
                           "postcode": "ZZ99 3AB"}}
    collected = {"event_id": str(uuid.uuid4()), "participant_id": "P-000001",
                 "occurred_at": iso_ms(now_ms() - HOUR), "recorded_at": iso_ms(now_ms() - HOUR + 60_000),
                 "payload": {"kind": "sample", "event_type": "CENTRIFUGED", "sample_id": "SMP-000001-001",
                             "sample_type": "BLD", "container": "SST", "temperature_c": 21.0,
                             "centrifugation": {"g_force": 2000.0, "minutes": 10.0, "temperature_c": 4.0}}}
    assay = assay_event()
    status, answer = _post(gateway, ingest_site.lims_token, consent, collected, assay)
    assert status == 202 and answer["accepted"] == [consent["event_id"], collected["event_id"], assay["event_id"]]
    for _ in range(2):  # the whole batch again, then once more inside a bigger batch
        status, answer = _post(gateway, ingest_site.lims_token, consent, collected, assay)
        assert status == 202 and answer["accepted"] == [] and len(answer["duplicates"]) == 3
    status, answer = _post(gateway, ingest_site.lims_token, assay, assay)  # twice within one request
    assert status == 202 and answer["duplicates"] == [assay["event_id"]] * 2
    on_topic = _events_on_topic(ingest_site)
    for event in (consent, collected, assay):
        assert len(on_topic[event["event_id"]]) == 1  # produced exactly once
    decoded = on_topic[consent["event_id"]][0]
    assert decoded["_key"] == subject_key(ingest_site.settings.site_id, "P-000001")
    name, payload = decoded["payload"]
    assert name.endswith("ConsentEvent") and payload["birth_date"].isoformat() == "1970-05-17"
    name, payload = on_topic[collected["event_id"]][0]["payload"]
    assert payload["centrifugation"] == {"g_force": 2000.0, "minutes": 10.0, "temperature_c": 4.0, "braking": True}


def test_a_known_event_id_with_different_content_is_refused(gateway: TestClient, ingest_site) -> None:
    first = assay_event(value=2.0)
    assert _post(gateway, ingest_site.lims_token, first)[0] == 202
    changed = {**first, "payload": {**first["payload"], "value": 9.0}}
    status, answer = _post(gateway, ingest_site.lims_token, changed)
    assert status == 422 and answer["rejected"][0]["field_path"] == "events[0].event_id"
    assert len(_events_on_topic(ingest_site)[first["event_id"]]) == 1


def test_invalid_events_are_rejected_with_paths_and_dead_lettered(gateway: TestClient, ingest_site) -> None:
    good = assay_event()
    bad_loinc = assay_event(loinc_code="1988-4")
    bad_unit = assay_event(unit="mg/dL")
    future = {**assay_event(), "occurred_at": iso_ms(now_ms() + 2 * HOUR)}
    no_centrifugation = {**assay_event(), "payload": {"kind": "sample", "event_type": "CENTRIFUGED",
                                                      "sample_id": "SMP-1", "sample_type": "BLD"}}
    bad_kind = {**assay_event(), "payload": {"kind": "P-000001"}}
    status, answer = _post(gateway, ingest_site.lims_token, good, bad_loinc, bad_unit, future, no_centrifugation,
                           bad_kind)
    assert status == 202 and answer["accepted"] == [good["event_id"]]
    rejected = {r["index"]: r for r in answer["rejected"]}
    assert rejected[1]["field_path"] == "events[1].payload.loinc_code" and "check digit" in rejected[1]["reason"]
    assert "mg/L" in rejected[2]["reason"]
    assert rejected[3]["field_path"] == "events[3].occurred_at"
    assert "centrifugation" in rejected[4]["reason"]
    assert rejected[5]["field_path"] == "events[5].payload.kind" and "P-000001" not in rejected[5]["reason"]
    letters = {bytes(d["original_value"]): d for d in (
        get_codec().decode(r.value) for r in read_topic(ingest_site.settings,
                                                       dlq(Stage.INGEST).name(ingest_site.settings.site_id)))}
    for index, event in enumerate((good, bad_loinc, bad_unit, future, no_centrifugation, bad_kind)):
        if index:
            assert letters[orjson.dumps(event)]["reason"] == rejected[index]["reason"]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    columns = sorted({k for row in rows for k in row})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_lims_csv_import_reports_rejected_rows_and_is_idempotent(ingest_site, tmp_path: Path, monkeypatch) -> None:
    from clinstream.core.config import get_settings
    from clinstream.ingest.lims_cli import app

    occurred = iso_ms(now_ms() - 2 * HOUR)
    rows = [
        {"event_id": str(uuid.uuid4()), "participant_id": "P-000003", "occurred_at": occurred, "kind": "sample",
         "event_type": "CENTRIFUGED", "sample_id": "SMP-3-1", "sample_type": "BLD", "container": "PED",
         "centrifuge_g": "2000", "centrifuge_minutes": "10", "centrifuge_temperature_c": "4",
         "centrifuge_braking": "yes", "temperature_c": "21.5"},
        {"event_id": str(uuid.uuid4()), "participant_id": "P-000003", "occurred_at": occurred, "kind": "assay",
         "sample_id": "SMP-3-1-A1", "analyte": "CRP", "loinc_code": "1988-5", "value": "7.5", "unit": "mg/L"},
        {"event_id": str(uuid.uuid4()), "participant_id": "P-000003", "occurred_at": occurred, "kind": "consent",
         "action": "GRANT", "status": "ACTIVE", "scope": "DUO:0000006;DUO:0000019", "birth_date": "1961-02-03",
         "time_zone": "Europe/Vienna"},
        {"event_id": str(uuid.uuid4()), "participant_id": "P-000003", "occurred_at": occurred, "kind": "assay",
         "sample_id": "SMP-3-1-A2", "analyte": "CRP", "loinc_code": "1988-5", "value": "high", "unit": "mg/L"},
    ]
    path = tmp_path / "lims.csv"
    _write_csv(path, rows)
    for name, value in (("SITE_ID", ingest_site.settings.site_id),
                        ("KAFKA_BOOTSTRAP", ingest_site.settings.kafka_bootstrap),
                        ("DATABASE_URL", ingest_site.settings.database_url)):
        monkeypatch.setenv(f"CLINSTREAM_{name}", value)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["import", str(path)])
        assert result.exit_code == 1, result.output
        assert "4 rows: 3 accepted, 0 already imported, 1 rejected" in result.output
        assert "rows[4].payload.value" in result.output
        result = runner.invoke(app, ["import", str(path)])  # again: nothing new
        assert result.exit_code == 1 and "0 accepted, 3 already imported, 1 rejected" in result.output
        _write_csv(path, rows[:3])
        assert runner.invoke(app, ["import", str(path)]).exit_code == 0
        bad = tmp_path / "bad.csv"
        bad.write_text("event_id,participant_id,occurred_at,kind,colour\n")
        result = runner.invoke(app, ["import", str(bad)])
        assert result.exit_code == 2 and "colour" in result.output
    finally:
        get_settings.cache_clear()
    on_topic = _events_on_topic(ingest_site)
    assert all(len(on_topic[row["event_id"]]) == 1 for row in rows[:3])
    assert rows[3]["event_id"] not in on_topic
    name, payload = on_topic[rows[0]["event_id"]][0]["payload"]
    assert payload["centrifugation"]["braking"] is True and payload["container"] == "PED"
    assert on_topic[rows[2]["event_id"]][0]["payload"][1]["time_zone"] == "Europe/Vienna"
    with connect(ingest_site.settings) as conn:  # the participant's zone, recorded as the gateway does
        cred = credentials_schema(ingest_site.settings.db_schema)
        assert conn.execute(f'SELECT time_zone FROM "{cred}".participant_time_zones WHERE participant_id = %s',
                            ("P-000003",)).fetchall() == [("Europe/Vienna",)]
    dead = [get_codec().decode(r.value) for r in read_topic(ingest_site.settings,
                                                           dlq(Stage.INGEST).name(ingest_site.settings.site_id))]
    csv_letters = [d for d in dead if d["content_type"] == "text/csv" and rows[3]["event_id"].encode() in
                   d["original_value"]]
    assert csv_letters and csv_letters[0]["field_path"] == "rows[4].payload.value"


def test_devices_and_lims_key_commands(ingest_site, monkeypatch) -> None:
    from clinstream.core.config import get_settings
    from clinstream.ingest.devices_cli import app as devices
    from clinstream.ingest.lims_cli import app as lims

    monkeypatch.setenv("CLINSTREAM_SITE_ID", ingest_site.settings.site_id)
    monkeypatch.setenv("CLINSTREAM_DATABASE_URL", ingest_site.settings.database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(devices, ["register", "--device-id", "SIM-CLI-1", "--participant", "P-000042"])
        assert result.exit_code == 0, result.output
        token = result.stdout.strip().splitlines()[-1]
        assert token.startswith("csd_")
        again = runner.invoke(devices, ["register", "--device-id", "SIM-CLI-1", "--participant", "P-000043"])
        assert again.exit_code == 2 and "active credential" in again.output  # one participant per device
        listed = runner.invoke(devices, ["list"])
        assert "SIM-CLI-1" in listed.output and token.split(".")[1] not in listed.output
        assert runner.invoke(devices, ["revoke", "--device-id", "SIM-CLI-1"]).exit_code == 0
        assert runner.invoke(devices, ["revoke", "--device-id", "SIM-CLI-1"]).exit_code == 1
        assert "SIM-CLI-1" not in runner.invoke(devices, ["list"]).output
        assert "SIM-CLI-1" in runner.invoke(devices, ["list", "--all"]).output
        key = runner.invoke(lims, ["register-key", "lims-cli"])
        assert key.exit_code == 0 and key.stdout.strip().splitlines()[-1].startswith("csl_")
        assert "lims-cli" in runner.invoke(lims, ["list-keys"]).output
    finally:
        get_settings.cache_clear()
