"""`clinstream dlq redrive --stage ingest` on the real broker and DB: blocks and LIMS events the gateway refused
under a strict clock-skew limit go to the raw topics exactly once after the limit is relaxed.

The gateway (in-process, real producer and credential store) runs with `max_future_skew_s=300`. A device posts
a valid block, two blocks whose samples run 19 minutes past the receipt (a fast device clock) and one with
implausible heart rates; a LIMS posts one valid event and three future-dated ones, and a CSV import brings a
fourth. One dead letter from before the request context existed is added by hand. Then the limit is relaxed
(CLINSTREAM_INGEST_MAX_FUTURE_SKEW_S=3600 for the CLI, the same limit for the dry run and the second run,
which call the function in-process; a relaxed gateway meanwhile accepts one of the LIMS events resent
unchanged and another event id with different content). The re-drive sends the two blocks,
byte for byte what the relaxed gateway produces for them, plus the two new LIMS events (recorded in the
gateway's event-id ledger); the resent event counts as already in the stream; the implausible block, the
conflicting event id and the old dead letter stay in the DLQ. A second re-drive sends nothing.
"""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pseudonymise_kafka import read_topic
from replay_helpers import clinstream_json, scalar

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REDRIVEN_FROM
from clinstream.core.db import connect
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import DurableProducer
from clinstream.core.timeutil import now_ms
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY, Stage, dlq
from clinstream.ingest.app import create_app
from clinstream.ingest.biobank_intake import EVENT_ID_CONFLICT
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.credentials import register_device, register_lims
from clinstream.ingest.csv_runner import CSV_IMPORT_KEY, import_csv
from clinstream.ingest.dlq_context import read_context, telemetry_context
from clinstream.ingest.gateway_db import DevicePrincipal
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.redrive import NO_CONTEXT, IngestRedriver
from clinstream.ingest.telemetry_intake import TelemetryIntake
from clinstream.replay.dlq import read_dead_letters
from clinstream.replay.redrive import redrive

pytestmark = pytest.mark.integration

MIN = 60_000
STRICT = IngestSettings(max_future_skew_s=300)
RELAXED = IngestSettings(max_future_skew_s=3600)
RELAXED_ENV = {"CLINSTREAM_INGEST_MAX_FUTURE_SKEW_S": "3600"}
DEVICE_ID, PARTICIPANT = "SIM-DEV-0777", "P-000777"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _block(start_ms: int, *, n: int = 21, step_ms: int = MIN, bpm: float = 70.0) -> dict[str, Any]:
    return {"block_id": str(uuid.uuid4()), "participant_id": PARTICIPANT, "sequence": 1, "start": _iso(start_ms),
            "utc_offset_minutes": 60, "schema": "heart-rate", "unit": "beats/min",
            "offsets_ms": [i * step_ms for i in range(n)], "values": [bpm + i % 3 for i in range(n)]}


def _event(occurred_ms: int, value: float = 3.2, event_id: str | None = None) -> dict[str, Any]:
    return {"event_id": event_id or str(uuid.uuid4()), "participant_id": PARTICIPANT,
            "occurred_at": _iso(occurred_ms),
            "payload": {"kind": "assay", "sample_id": "SMP-777-01", "analyte": "CRP", "loinc_code": "1988-5",
                        "value": value, "unit": "mg/L"}}


@dataclass(frozen=True)
class Site:
    settings: Settings
    device: DevicePrincipal
    device_token: str
    lims_key_id: str
    lims_token: str


@pytest.fixture
def site(kafka_site: Settings, db_site: Settings) -> Iterator[Site]:
    with connect(kafka_site) as conn:
        dev = register_device(conn, DEVICE_ID, PARTICIPANT)
        lims = register_lims(conn, "lims-test")
        conn.commit()
    yield Site(kafka_site, DevicePrincipal(dev.key_id, DEVICE_ID, PARTICIPANT), dev.token, lims.key_id, lims.token)


def _post(gw: TestClient, path: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = gw.post(path, content=orjson.dumps(payload),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code in (202, 422), r.text
    answer: dict[str, Any] = r.json()
    return answer


def _by_id(settings: Settings, topic: str, id_field: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for rec in read_topic(settings, topic):
        out.setdefault(str(get_codec().decode(rec.value or b"")[id_field]), []).append(rec)
    return out


def test_ingest_redrive_after_relaxing_the_skew_limit_sends_each_record_once(site: Site, tmp_path: Path) -> None:
    s = site.settings
    now = now_ms()
    ok_block, bad_hr = _block(now - 30 * MIN), _block(now - 30 * MIN, bpm=400.0)
    skewed = [_block(now - MIN), _block(now - 2 * MIN)]  # samples up to 19 and 18 min after the receipt
    ok_event, future, resent, conflicting = (_event(now - 60 * MIN), _event(now + 20 * MIN),
                                             _event(now + 20 * MIN), _event(now + 20 * MIN))
    with TestClient(create_app(s, STRICT)) as gw:
        tele = _post(gw, "/v1/telemetry", site.device_token, {"blocks": [ok_block, *skewed, bad_hr]})
        assert tele["accepted"] == [ok_block["block_id"]] and len(tele["rejected"]) == 3
        bio = _post(gw, "/v1/biobank/events", site.lims_token, {"events": [ok_event, future, resent, conflicting]})
        assert bio["accepted"] == [ok_event["event_id"]] and len(bio["rejected"]) == 3
    csv_row = _event(now + 20 * MIN)
    path = tmp_path / "lims.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["event_id", "participant_id", "kind", "occurred_at", "sample_id", "analyte", "loinc_code",
                    "value", "unit"])
        w.writerow([csv_row["event_id"], PARTICIPANT, "assay", csv_row["occurred_at"], "SMP-777-01", "CRP",
                    "1988-5", "3.2", "mg/L"])
    assert len(asyncio.run(import_csv(s, STRICT, path)).errors) == 1
    old = _block(now - MIN)  # dead-lettered before the request context existed: no context headers
    producer = DurableProducer(s)
    try:
        producer.send(dlq(Stage.INGEST).name(s.site_id), [dead_letter(
            get_codec(), site_id=s.site_id, stage=Stage.INGEST, content_type="application/json",
            rejection=Rejection("samples lie more than 300 s in the future (device clock?)", "blocks[0].start"),
            original_value=orjson.dumps(old), original_key=subject_key(s.site_id, PARTICIPANT))], 30)
    finally:
        producer.close()

    letters = list(read_dead_letters(s, Stage.INGEST))
    assert len(letters) == 8
    received = {read_context(r.headers).received_ms for r in letters  # type: ignore[union-attr]
                if read_context(r.headers) is not None and r.original_key is not None}
    assert len(received) == 1  # every telemetry dead letter of the request carries its receipt instant
    received_ms = received.pop()
    assert abs(received_ms - now) < 60_000
    for r in letters:
        ctx = read_context(r.headers)
        if r.original_key is not None and ctx is not None:
            assert ctx == telemetry_context(received_ms, DEVICE_ID, PARTICIPANT)

    # the fix: a relaxed gateway accepts a LIMS resend and another event under a refused event's id
    with TestClient(create_app(s, RELAXED)) as gw:
        assert _post(gw, "/v1/biobank/events", site.lims_token, {"events": [resent]})["accepted"] == [
            resent["event_id"]]
        assert _post(gw, "/v1/biobank/events", site.lims_token,
                     {"events": [_event(now, value=9.9, event_id=conflicting["event_id"])]})["accepted"] == [
            conflicting["event_id"]]

    tele_topic, bio_topic = RAW_TELEMETRY.name(s.site_id), RAW_BIOBANK.name(s.site_id)
    before = (len(read_topic(s, tele_topic)), len(read_topic(s, bio_topic)))
    dry = redrive(s, Stage.INGEST, dry_run=True, redriver=IngestRedriver(s, RELAXED))
    assert (dry.redriven, dry.duplicates, dry.still_failing) == (4, 1, 3)
    assert (len(read_topic(s, tele_topic)), len(read_topic(s, bio_topic))) == before  # a dry run sends nothing

    first = clinstream_json(s, tmp_path, "dlq", "redrive", "--stage", "ingest", env=RELAXED_ENV)
    assert (first["examined"], first["redriven"], first["duplicates"], first["still_failing"]) == (8, 4, 1, 3)
    assert first["targets"] == {tele_topic: 2, bio_topic: 2}
    implausible = next(r.reason for r in letters if "plausible range" in r.reason)
    assert first["failures"] == {NO_CONTEXT: 1, EVENT_ID_CONFLICT: 1, implausible: 1}
    again = IngestRedriver(s, RELAXED)
    try:
        second = redrive(s, Stage.INGEST, redriver=again)
    finally:
        again.close()
    assert (second.examined, second.redriven, second.duplicates, second.still_failing) == (3, 0, 0, 3)
    assert dict(second.failures) == first["failures"]  # only the pending ones were examined again

    # telemetry: each skewed block exactly once more, byte for byte what the gateway produces under the fix
    gateway_now = TelemetryIntake(s.site_id, RELAXED, None, GatewayMetrics())  # type: ignore[arg-type]
    expected = gateway_now.prepare({"blocks": skewed}, site.device, received_ms).raw
    blocks = _by_id(s, tele_topic, "block_id")
    assert len(blocks) == 3 and sum(len(v) for v in blocks.values()) == 3
    for block, (key, value, _) in zip(skewed, expected, strict=True):
        [rec] = blocks[block["block_id"]]
        assert (rec.key, rec.value) == (key, value)
        assert [k for k, _ in rec.headers] == [HEADER_REDRIVEN_FROM]
    assert bad_hr["block_id"] not in blocks and old["block_id"] not in blocks

    # biobank: the new events once each (recorded in the ledger); the resend and the conflict only as accepted
    events = _by_id(s, bio_topic, "event_id")
    assert Counter({k: len(v) for k, v in events.items()}) == Counter(
        {ok_event["event_id"]: 1, future["event_id"]: 1, csv_row["event_id"]: 1, resent["event_id"]: 1,
         conflicting["event_id"]: 1})
    for event_id in (future["event_id"], csv_row["event_id"]):
        [rec] = events[event_id]
        assert [k for k, _ in rec.headers] == [HEADER_REDRIVEN_FROM] and rec.key == subject_key(s.site_id,
                                                                                               PARTICIPANT)
    assert get_codec().decode(events[conflicting["event_id"]][0].value)["occurred_at"].timestamp() * 1000 == now
    ledger = "SELECT lims_key_id FROM ingest_event_ids WHERE event_id = %s"
    assert scalar(s, ledger, (uuid.UUID(future["event_id"]),)) == site.lims_key_id
    assert scalar(s, ledger, (uuid.UUID(csv_row["event_id"]),)) == CSV_IMPORT_KEY

    assert len(list(read_dead_letters(s, Stage.INGEST))) == 8  # failures were not written again
    after = clinstream_json(s, tmp_path, "dlq", "list", "--stage", "ingest")
    assert sum(g["redriven"] for g in after) == 5 and sum(g["records"] for g in after) == 8
