"""The gateway against the real broker and database: status codes, partial acceptance, DLQ contents, auth."""

from __future__ import annotations

import gzip
import logging

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import JSON, MIN, assay_event, auth, body, body_temperature_block, hr_block, now_ms, read_topic
from prometheus_client.parser import text_string_to_metric_families

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.constants import DLQ_HEADER_REASON, DLQ_HEADER_STAGE
from clinstream.core.db import connect
from clinstream.core.topics import RAW_TELEMETRY, Stage, dlq
from clinstream.ingest.credentials import register_device, revoke_devices
from condition_wait import wait_until

pytestmark = pytest.mark.integration


def test_valid_batch_is_acked_and_lands_on_the_raw_topic(gateway: TestClient, ingest_site) -> None:
    blocks = [hr_block(), hr_block(schema="oxygen-saturation", unit="%", values=[97.0] * 60),
              hr_block(schema="body-temperature", unit="Cel", location="wrist", values=[33.5] * 60)]
    r = gateway.post("/v1/telemetry", content=body(*blocks), headers=auth(ingest_site.device_token))
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["accepted"] == [b["block_id"] for b in blocks]
    assert answer["rejected"] == [] and answer["readings_accepted"] == 180
    records = read_topic(ingest_site.settings, RAW_TELEMETRY.name(ingest_site.settings.site_id))
    codec = get_codec()
    mine = {}
    for rec in records:
        decoded = codec.decode(rec.value)
        mine[str(decoded["block_id"])] = (rec, decoded)
    for block in blocks:
        rec, decoded = mine[block["block_id"]]
        assert rec.key == subject_key(ingest_site.settings.site_id, "P-000001")
        assert decoded["device_id"] == ingest_site.device_id  # from the credential, not from the payload
        assert decoded["participant_id"] == "P-000001" and decoded["utc_offset_minutes"] == 60
    name, temp = mine[blocks[2]["block_id"]][1]["measurement"]
    assert name.endswith("SkinTemperatureSamples") and temp["location"] == "WRIST" and temp["celsius"][0] == 33.5


def test_gzip_body_is_accepted(gateway: TestClient, ingest_site) -> None:
    headers = {**auth(ingest_site.device_token), "Content-Encoding": "gzip"}
    r = gateway.post("/v1/telemetry", content=body(hr_block(), compress=True), headers=headers)
    assert r.status_code == 202, r.text


def test_partial_acceptance_and_dlq_holds_original_bytes_and_reason(gateway: TestClient, ingest_site) -> None:
    good = hr_block()
    out_of_range = hr_block(values=[60.0] * 59 + [400.0])
    wrong_unit = hr_block(unit="bpm")
    not_a_block = 42
    r = gateway.post("/v1/telemetry", content=body(good, out_of_range, wrong_unit, not_a_block),  # type: ignore[arg-type]
                     headers=auth(ingest_site.device_token))
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["accepted"] == [good["block_id"]]
    rejected = {item["index"]: item for item in answer["rejected"]}
    assert set(rejected) == {1, 2, 3}
    assert rejected[1]["field_path"] == "blocks[1].values[59]" and "plausible range" in rejected[1]["reason"]
    assert rejected[1]["id"] == out_of_range["block_id"]
    assert rejected[2]["field_path"] == "blocks[2].unit" and "beats/min" in rejected[2]["reason"]
    assert rejected[3]["id"] is None

    codec = get_codec()
    site = ingest_site.settings.site_id
    letters = [codec.decode(rec.value) | {"_headers": dict(rec.headers), "_key": rec.key}
               for rec in read_topic(ingest_site.settings, dlq(Stage.INGEST).name(site))]
    by_original = {bytes(d["original_value"]): d for d in letters}
    for index, raw in ((1, out_of_range), (2, wrong_unit), (3, not_a_block)):
        letter = by_original[orjson.dumps(raw)]  # the JSON of exactly that block
        assert letter["reason"] == rejected[index]["reason"]
        assert letter["field_path"] == rejected[index]["field_path"]
        assert letter["stage"] == "ingest" and letter["content_type"] == "application/json"
        assert letter["_headers"][DLQ_HEADER_STAGE] == b"ingest"
        assert letter["_headers"][DLQ_HEADER_REASON] == rejected[index]["reason"].encode()
        assert letter["_key"] == subject_key(site, "P-000001")


def test_nothing_accepted_is_422_with_every_reason(gateway: TestClient, ingest_site) -> None:
    blocks = [hr_block(offsets_ms=[0, 2000, 1000] + [3000 + i for i in range(57)]),
              hr_block(values=[60.0] * 10),
              hr_block(start=ingest_time_in_future()),
              hr_block(start="2026-01-01T00:00:00"),  # no offset
              hr_block(schema="rr-interval", unit="ms", values=[800.0] * 60,
                       offsets_ms=[0] * 60),  # rr offsets must strictly increase
              hr_block(schema="step-count", unit="steps", durations_s=[60] * 60, values=[1000] * 60,
                       offsets_ms=[i * 60_000 for i in range(60)]),
              hr_block(n=10_001),
              hr_block(sequence=-1),
              hr_block(values=[True] * 60),
              hr_block(schema="sleep-episode"),
              hr_block(extra_field=1)]
    r = gateway.post("/v1/telemetry", content=body(*blocks), headers=auth(ingest_site.device_token))
    assert r.status_code == 422, r.text
    paths = [item["field_path"] for item in r.json()["rejected"]]
    assert paths == ["blocks[0].offsets_ms[2]", "blocks[1].values", "blocks[2].start", "blocks[3].start",
                     "blocks[4].offsets_ms[1]", "blocks[5].values[0]", "blocks[6].offsets_ms",
                     "blocks[7].sequence", "blocks[8].values[0]", "blocks[9].episodes", "blocks[10].extra_field"]
    reasons = [item["reason"] for item in r.json()["rejected"]]
    assert "future" in reasons[2] and "steps per second" in reasons[5]


def ingest_time_in_future() -> str:
    from clinstream_devtools.simulate.telemetry import iso_ms

    return iso_ms(now_ms() + 30 * MIN)


@pytest.mark.parametrize(("content", "headers", "status", "error"), [
    (b"{not json", JSON, 400, "malformed_json"),
    (b"", JSON, 400, "malformed_json"),
    (b"\xff\xfe{}", JSON, 400, "malformed_json"),
    (b"plain, not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, "malformed_body"),
    (gzip.compress(b'{"blocks": []}', mtime=0)[:-6], {**JSON, "Content-Encoding": "gzip"}, 400, "malformed_body"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    (b"{}", {}, 415, "unsupported_media_type"),
    (b"{}", {"Content-Type": "application/json; charset=latin-1"}, 415, "unsupported_media_type"),
    (b"{}", {**JSON, "Content-Encoding": "br"}, 415, "unsupported_content_encoding"),
    (b'{"blocks": {}}', JSON, 422, "invalid_request"),
    (b'{"blocks": []}', JSON, 422, "invalid_request"),
    (b"[1, 2]", JSON, 422, "invalid_request"),
    (b'{"blocks": [1], "more": 1}', JSON, 422, "invalid_request"),
])
def test_request_errors(gateway: TestClient, ingest_site, content: bytes, headers: dict[str, str], status: int,
                        error: str) -> None:
    headers = {"Authorization": f"Bearer {ingest_site.device_token}", **headers}
    if "Content-Type" not in headers:
        headers["Content-Type"] = ""
    r = gateway.post("/v1/telemetry", content=content, headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text


def test_oversized_bodies_are_413(gateway: TestClient, ingest_site) -> None:
    limits = ingest_site.limits
    big = body(hr_block(n=10_000), hr_block(n=10_000), hr_block(n=10_000))
    assert len(big) > limits.max_body_bytes
    r = gateway.post("/v1/telemetry", content=big, headers=auth(ingest_site.device_token))  # Content-Length
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: chunked transfer, the streamed size is checked
        for i in range(0, len(big), 16_384):
            yield big[i:i + 16_384]

    r = gateway.post("/v1/telemetry", content=chunks(), headers=auth(ingest_site.device_token))
    assert r.status_code == 413

    bomb = gzip.compress(b'{"blocks": [' + b" " * (limits.max_decoded_bytes * 4) + b"]}")
    assert len(bomb) < limits.max_body_bytes  # small on the wire, huge inflated
    r = gateway.post("/v1/telemetry", content=bomb,
                     headers={**auth(ingest_site.device_token), "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["detail"]


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwdw==", "Bearer", "Bearer not-a-token",
                                           "Bearer csd_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_missing_or_invalid_credential_is_401(gateway: TestClient, authorization: str | None) -> None:
    headers = dict(JSON)
    if authorization:
        headers["Authorization"] = authorization
    r = gateway.post("/v1/telemetry", content=body(hr_block()), headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_secret_and_wrong_kind_of_token_are_401(gateway: TestClient, ingest_site) -> None:
    prefix, _, secret = ingest_site.device_token.partition(".")
    forged = f"{prefix}.{secret[::-1]}"
    assert gateway.post("/v1/telemetry", content=body(hr_block()), headers=auth(forged)).status_code == 401
    r = gateway.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.lims_token))
    assert r.status_code == 401
    r = gateway.post("/v1/biobank/events", content=orjson.dumps({"events": [assay_event()]}),
                     headers=auth(ingest_site.device_token))
    assert r.status_code == 401


def test_device_writing_for_another_participant_is_403(gateway: TestClient, ingest_site) -> None:
    mine, theirs = hr_block("P-000001"), hr_block("P-000002")
    r = gateway.post("/v1/telemetry", content=body(mine, theirs), headers=auth(ingest_site.device_token))
    assert r.status_code == 403 and r.json()["field_path"] == "blocks[1].participant_id"
    assert "P-000002" not in r.text
    r = gateway.post("/v1/telemetry", content=body(theirs), headers=auth(ingest_site.other_device_token))
    assert r.status_code == 202
    topic = RAW_TELEMETRY.name(ingest_site.settings.site_id)
    ids = {str(get_codec().decode(rec.value)["block_id"]) for rec in read_topic(ingest_site.settings, topic)}
    assert mine["block_id"] not in ids  # nothing of the refused request was produced


def test_revocation_takes_effect_within_a_second(gateway: TestClient, ingest_site) -> None:
    with connect(ingest_site.settings) as conn:
        issued = register_device(conn, "SIM-DEV-REVOKE", "P-000009")
        conn.commit()
    block = hr_block("P-000009")
    assert gateway.post("/v1/telemetry", content=body(block), headers=auth(issued.token)).status_code == 202
    with connect(ingest_site.settings) as conn:
        assert revoke_devices(conn, key_id=issued.key_id) == 1
        conn.commit()
    wait_until(lambda: gateway.post("/v1/telemetry", content=body(hr_block("P-000009")),
                                    headers=auth(issued.token)).status_code == 401,
               1.0, "a 401 for the revoked token", step_s=0.01)  # the bound (NOTIFY evicts cached tokens)


def test_health_readiness_metrics_and_openapi(gateway: TestClient, ingest_site) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}
    ready = gateway.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "broker": True, "database": True}
    gateway.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
    metrics = gateway.get("/metrics").text
    assert 'clinstream_gateway_requests_total{endpoint="/v1/telemetry",status="202"}' in metrics
    assert 'clinstream_gateway_readings_total{schema="heart-rate"}' in metrics
    for secret_or_id in ("P-000001", "P-000002", ingest_site.device_id, ingest_site.device_token.split(".")[0][4:]):
        assert secret_or_id not in metrics
    doc = gateway.get("/openapi.json").json()
    assert {"/v1/telemetry", "/v1/biobank/events", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"TelemetryBatch", "HeartRateBlock", "SleepEpisodeBlock", "BiobankBatch", "AssayPayload",
            "TelemetryAnswer", "ErrorBody"} <= set(schemas)
    block_ref = doc["paths"]["/v1/telemetry"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert block_ref == {"$ref": "#/components/schemas/TelemetryBatch"}
    assert schemas["HeartRateBlock"]["properties"]["unit"]["const"] == "beats/min"
    assert doc["components"]["securitySchemes"]["deviceToken"]["scheme"] == "bearer"


def _samples(metrics_text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == name}


def test_block_and_reading_counters_add_up_per_kind(gateway: TestClient, ingest_site) -> None:
    """One request of blocks of two kinds and one refused block: each kind's accepted blocks and readings are
    counted exactly, whatever the order of the blocks."""
    before = gateway.get("/metrics").text
    blocks = [hr_block(n=3, sequence=1), body_temperature_block(n=4), hr_block(n=5, sequence=2),
              hr_block(n=2, values=[-1.0, 60.0]), hr_block(n=7, sequence=3)]
    answer = gateway.post("/v1/telemetry", content=body(*blocks), headers=auth(ingest_site.device_token))
    assert answer.status_code == 202 and len(answer.json()["rejected"]) == 1
    after = gateway.get("/metrics").text
    for name, expected in (
            ("clinstream_gateway_blocks_total", {(("outcome", "accepted"), ("schema", "heart-rate")): 3,
                                                 (("outcome", "accepted"), ("schema", "body-temperature")): 1,
                                                 (("outcome", "rejected"), ("schema", "any")): 1}),
            ("clinstream_gateway_readings_total", {(("schema", "heart-rate"),): 15,
                                                   (("schema", "body-temperature"),): 4})):
        was, now = _samples(before, name), _samples(after, name)
        assert {k: now[k] - was.get(k, 0.0) for k in now if now[k] != was.get(k, 0.0)} == expected


def test_no_identifier_or_credential_in_logs(gateway: TestClient, ingest_site, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    gateway.post("/v1/telemetry", content=body(hr_block(), hr_block(values=[1.0] * 60)),
                 headers=auth(ingest_site.device_token))
    gateway.post("/v1/telemetry", content=body(hr_block("P-000002")), headers=auth(ingest_site.device_token))
    gateway.post("/v1/telemetry", content=b"{", headers=auth(ingest_site.device_token + "x"))
    text = caplog.text
    for needle in ("P-000001", "P-000002", ingest_site.device_id, ingest_site.device_token.split(".")[1],
                   ingest_site.device_token.split(".")[0]):
        assert needle not in text


def test_load_is_shed_with_503_when_too_many_requests_are_in_progress(gateway: TestClient, ingest_site) -> None:
    gw = gateway.app.state.gateway  # type: ignore[attr-defined]
    gw.in_flight = gw.limits.max_in_flight  # as if that many requests were being processed
    try:
        r = gateway.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503 and r.json()["error"] == "overloaded" and "Retry-After" in r.headers
    finally:
        gw.in_flight = 0
    assert gateway.post("/v1/telemetry", content=body(hr_block()),
                        headers=auth(ingest_site.device_token)).status_code == 202
