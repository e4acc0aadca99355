"""The outside fuzz's findings (issue 16), each against the real broker and database: deep JSON, a serial in the
PostgreSQL log, the librdkafka log storm of a broker outage, and free text in an assay's analyte."""

from __future__ import annotations

import gzip
import json
import logging
import uuid
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from ingest_helpers import assay_event, auth, hr_block, read_topic

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import Stage, dlq
from clinstream.ingest.broker_log import BrokerLogSummary
from clinstream.ingest.credentials import CredentialError, register_device, revoke_devices
from clinstream.ingest.json_depth import json_depth
from clinstream.ingest.producer import LIBRDKAFKA_LOG, AsyncDurableProducer
from condition_wait import wait_until

pytestmark = pytest.mark.integration
DEPTH = 300  # deeper than orjson.dumps' limit (254), within orjson.loads' (1,024)


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    codec = get_codec()
    return [codec.decode(rec.value) for rec in read_topic(settings, dlq(Stage.INGEST).name(settings.site_id))]


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _with(obj: dict[str, Any], field: str, json_text: bytes) -> bytes:
    """The JSON of an object with one more field whose value is given as JSON text."""
    return orjson.dumps(obj)[:-1] + b',"' + field.encode() + b'":' + json_text + b"}"


def test_deep_telemetry_is_422_naming_the_limit_and_its_original_bytes_are_dead_lettered(
        gateway: TestClient, ingest_site) -> None:
    # spacing that orjson would not write: the dead letter must hold the bytes as sent
    sent = b'{ "blocks" : [' + _with(hr_block(), "extra", _deep(DEPTH)) + b"] }"
    r = gateway.post("/v1/telemetry", content=sent, headers=auth(ingest_site.device_token))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "nesting_too_deep" and "32 levels" in r.json()["detail"]
    originals = [d["original_value"] for d in _dead_letters(ingest_site.settings)]
    assert sent in originals


def test_deep_gzip_biobank_body_is_422_and_dead_lettered_as_decoded(gateway: TestClient, ingest_site) -> None:
    event = assay_event()
    text = b'{"events":[' + _with(event, "extra", _deep(DEPTH)) + b"]}"
    r = gateway.post("/v1/biobank/events", content=gzip.compress(text),
                     headers={**auth(ingest_site.lims_token), "Content-Encoding": "gzip"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "nesting_too_deep"
    assert text in [d["original_value"] for d in _dead_letters(ingest_site.settings)]


def test_nesting_within_the_limit_is_judged_per_block(gateway: TestClient, ingest_site) -> None:
    r = gateway.post("/v1/telemetry", content=b'{"blocks":[' + _with(hr_block(), "extra", _deep(20)) + b"]}",
                     headers=auth(ingest_site.device_token))
    assert r.status_code == 422 and r.json()["rejected"][0]["field_path"] == "blocks[0].extra"


_json = st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.text(alphabet='[]{}"\\k', max_size=4), inner, max_size=3), max_leaves=30)


def _python_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_python_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_python_depth(v) for v in value.values()), default=0)
    return 0


@given(_json, st.booleans())
def test_json_depth_matches_the_parsed_structure(value: Any, spaced: bool) -> None:
    text = json.dumps(value, indent=1 if spaced else None).encode()
    assert json_depth(text) == _python_depth(value)


def _server_log(settings: Settings) -> str:
    pgdir = settings.postgres_dir
    try:
        current = (pgdir / "current_logfiles").read_text().split()[-1]
        return (pgdir / current).read_text(errors="replace")
    except (OSError, IndexError):
        pytest.skip("the PostgreSQL server log is not readable here")


def test_re_registering_an_active_device_puts_no_serial_into_the_server_log(ingest_site) -> None:
    serial = f"SIM-LOG-{uuid.uuid4().hex[:12]}"
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    with connect(ingest_site.settings, autocommit=True) as conn:
        register_device(conn, serial, "P-000031")
        with pytest.raises(CredentialError, match="already has an active credential"):
            register_device(conn, serial, "P-000031")
        revoke_devices(conn, device_id=serial)
        conn.execute(f"DO $$ BEGIN RAISE WARNING '{sentinel}'; END $$")  # log lines are written in order

    def log_through_the_sentinel() -> str:
        text = _server_log(ingest_site.settings)
        return text if sentinel in text else ""

    log = wait_until(log_through_the_sentinel, 10, "the sentinel in the server log", step_s=0.05)
    assert serial not in log


@pytest.mark.faults
def test_broker_outage_logs_one_summary_line_not_a_storm(ingest_site, caplog) -> None:
    """Stop the real broker under a connected producer: librdkafka's error lines become one summary line."""
    from clinstream_devtools.stack.common import stack_lock
    from clinstream_devtools.stack.kafka import start_kafka, stop_kafka

    settings = ingest_site.settings
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOG.name)
    client_id = f"storm-{uuid.uuid4().hex[:8]}"  # librdkafka tags its lines with it (other producers log too)
    producer = AsyncDurableProducer(settings, deadline_s=1.0, **{"client.id": client_id})
    try:
        assert producer.probe(5.0)
        with stack_lock(settings):  # other processes' `stack up` wait until the outage is over
            stop_kafka(settings)
            try:

                def error_lines_seen() -> bool:  # 30 librdkafka error lines (about 1.5 s of the outage)
                    producer.probe(0.2)  # blocks up to 0.2 s serving the producer's callbacks (its log lines)
                    return producer.log_summary.total >= 30

                wait_until(error_lines_seen, 30, "30 librdkafka error lines", step_s=0.0)
                lines = [r.getMessage() for r in caplog.records if r.name == LIBRDKAFKA_LOG.name
                         and r.levelno >= logging.WARNING and f"[{client_id}#" in r.getMessage()]
            finally:
                start_kafka(settings)
        wait_until(lambda: producer.probe(1.0), 120, "the broker to come back", step_s=0.0)
    finally:
        producer.close_within(1.0)
    assert len(lines) == 1 and lines[0].startswith("broker unreachable since "), lines
    assert producer.log_summary.since is None  # the outage was closed with one "broker reachable again" line


def test_summary_lines_are_spaced_and_carry_counts(caplog) -> None:
    now = [1_000.0]
    target = logging.getLogger("test.broker_log")
    summary = BrokerLogSummary(target, every_s=30.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger=target.name)
    for _ in range(20):
        summary.log(logging.ERROR, "FAIL|%s| connect failed", "rdkafka")
        now[0] += 1.0
    summary.log(logging.INFO, "an info line passes")
    now[0] += 15.0
    summary.log(logging.ERROR, "FAIL|%s| connect failed", "rdkafka")
    summary.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "broker unreachable since 1970-01-01T00:16:40Z: 1 librdkafka error line(s) since the last report, 1 in all "
        "(latest: FAIL|rdkafka| connect failed)",
        "an info line passes",
        "broker unreachable since 1970-01-01T00:16:40Z: 20 librdkafka error line(s) since the last report, 21 in all "
        "(latest: FAIL|rdkafka| connect failed)",
        "broker reachable again (unreachable since 1970-01-01T00:16:40Z; 21 librdkafka error line(s) folded)",
    ]


@pytest.mark.parametrize("analyte", ["CRP; patient Jane Roe", "crp", "Glucose", "hs-CRP note"])
def test_free_text_analyte_is_refused_and_dead_lettered(gateway: TestClient, ingest_site, analyte: str) -> None:
    event = assay_event(analyte=analyte)
    sent = orjson.dumps({"events": [event]})
    r = gateway.post("/v1/biobank/events", content=sent, headers=auth(ingest_site.lims_token))
    assert r.status_code == 422, r.text
    rejected = r.json()["rejected"][0]
    assert rejected["field_path"] == "events[0].payload.analyte" and "coded assay" in rejected["reason"]
    assert analyte not in r.text
    # the site's DLQ also holds other tests' dead letters (not all of them JSON): find this event's by its id
    mine = [orjson.loads(d["original_value"]) for d in _dead_letters(ingest_site.settings)
            if event["event_id"].encode() in d["original_value"]]
    assert any(isinstance(o, dict) and o.get("event_id") == event["event_id"] for o in mine)


def test_coded_analytes_are_accepted(gateway: TestClient, ingest_site) -> None:
    events = [assay_event(), assay_event(analyte="HSCRP", loinc_code="30522-7")]
    r = gateway.post("/v1/biobank/events", content=orjson.dumps({"events": events}),
                     headers=auth(ingest_site.lims_token))
    assert r.status_code == 202 and len(r.json()["accepted"]) == 2, r.text
