"""Pure validation logic of the gateway: blocks, events, bodies, credentials and CSV rows (no services)."""

from __future__ import annotations

import gzip
import random
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import MIN, assay_event, hr_block, now_ms

from clinstream.ingest.biobank_models import loinc_check_digit
from clinstream.ingest.biobank_validate import AcceptedEvent, BiobankValidator, RejectedEvent
from clinstream.ingest.body import decode_body, decodes_within, gunzip_limited
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.credentials import bearer_token, matches, new_token, parse_token
from clinstream.ingest.csv_import import row_to_event
from clinstream.ingest.errors import ApiError
from clinstream.ingest.telemetry_validate import AcceptedBlock, RejectedBlock, TelemetryValidator
from clinstream.ingest.validation_errors import field_path

LIMITS = IngestSettings()
VALIDATOR = TelemetryValidator(LIMITS, "site-t")


def _validate(block: object) -> AcceptedBlock | RejectedBlock:
    return VALIDATOR.validate(0, block, device_id="DEV", received_ms=now_ms())


def test_each_schema_maps_to_its_avro_branch() -> None:
    base = {"offsets_ms": [0, 60_000], "values": [1, 2]}
    cases = {
        "heart-rate": ({"unit": "beats/min", "values": [60, 61.5]}, "HeartRateSamples", "bpm"),
        "rr-interval": ({"unit": "ms", "values": [800, 810.0]}, "RRIntervalSamples", "rr_ms"),
        "step-count": ({"unit": "steps", "durations_s": [60, 60], "values": [10, 0]}, "StepCountSamples", "steps"),
        "oxygen-saturation": ({"unit": "%", "values": [97, 96]}, "OxygenSaturationSamples", "spo2_percent"),
        "body-temperature": ({"unit": "°C", "values": [33.1, 33.2]}, "SkinTemperatureSamples", "celsius"),
    }
    for schema, (fields, branch, column) in cases.items():
        result = _validate(hr_block(schema=schema, **{**base, **fields}))
        assert isinstance(result, AcceptedBlock), (schema, result)
        name, body = result.record["measurement"]
        assert name == f"org.clinstream.telemetry.{branch}" and body[column] == fields["values"]
        assert result.readings == 2
    block = hr_block(schema="acceleration", unit="m/s2", offsets_ms=[0, 40], x=[0.1, 0.2], y=[0, 0], z=[9.8, 9.7])
    assert isinstance(_validate(block), RejectedBlock)  # 'values' is not a field of acceleration blocks
    block = hr_block(schema="acceleration", unit="m/s2", offsets_ms=[0, 40], x=[0.1, 0.2], y=[0, 0], z=[9.8, 9.7])
    del block["values"]
    assert isinstance(_validate(block), AcceptedBlock)
    sleep = hr_block(schema="sleep-episode", episodes=[{
        "start_offset_ms": 0, "end_offset_ms": 8 * 60 * MIN, "total_sleep_time_min": 420.0,
        "wake_after_sleep_onset_min": 40.0, "latency_to_sleep_onset_min": 15.0, "number_of_awakenings": 3,
        "is_main_sleep": True}], start_ms=now_ms() - 9 * 60 * MIN)
    for key in ("unit", "offsets_ms", "values"):
        del sleep[key]
    result = _validate(sleep)
    assert isinstance(result, AcceptedBlock) and result.readings == 1


@pytest.mark.parametrize(("overrides", "path", "reason"), [
    ({"values": [60.0, 19.0]}, "values[1]", "plausible range 20-250"),
    ({"values": [60.0, 1e308]}, "values[1]", "plausible range"),
    ({"unit": "bpm"}, "unit", "beats/min"),
    ({"values": [60.0]}, "values", "values has 1 entries but offsets_ms has 2"),
    ({"offsets_ms": [1000, 0]}, "offsets_ms[1]", "non-decreasing"),
    ({"offsets_ms": [0, 25 * 3600 * 1000]}, "offsets_ms[1]", "span at most"),
    ({"offsets_ms": [0, -1]}, "offsets_ms[1]", "greater than or equal to 0"),
    ({"values": ["60", 61]}, "values[0]", "valid number"),
    ({"utc_offset_minutes": 900}, "utc_offset_minutes", "less than or equal to 840"),
    ({"block_id": "not-a-uuid"}, "block_id", "UUID"),
    ({"participant_id": "P 1"}, "participant_id", "pattern"),
    ({"start": 1767225600000}, "start", "RFC 3339"),
    ({"schema": "blood-pressure"}, "schema", "unknown kind"),
    ({"Pâtient-000001": 1}, "<unknown field>", "Extra inputs"),
])
def test_block_rejections_name_the_field(overrides: dict, path: str, reason: str) -> None:
    block = hr_block(n=2, **overrides)
    result = _validate(block)
    assert isinstance(result, RejectedBlock), result
    assert result.rejection.field_path == f"blocks[0].{path}" and reason in result.rejection.reason
    assert result.original == orjson.dumps(block)


def test_clock_skew_and_age_limits() -> None:
    now = now_ms()
    in_skew = hr_block(n=2, start_ms=now + (LIMITS.max_future_skew_s - 5) * 1000 - 1000)
    assert isinstance(VALIDATOR.validate(0, in_skew, device_id="D", received_ms=now), AcceptedBlock)
    beyond = hr_block(n=2, start_ms=now + LIMITS.max_future_skew_s * 1000)
    assert isinstance(VALIDATOR.validate(0, beyond, device_id="D", received_ms=now), RejectedBlock)
    old = hr_block(n=2, start_ms=now - (LIMITS.max_block_age_days + 1) * 86_400_000)
    assert isinstance(VALIDATOR.validate(0, old, device_id="D", received_ms=now), RejectedBlock)
    site = TelemetryValidator(IngestSettings(hr_max_bpm=200), "s")  # site-configurable range
    assert isinstance(site.validate(0, hr_block(n=2, values=[210, 60]), device_id="D", received_ms=now),
                      RejectedBlock)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=20, max_value=250), min_size=1, max_size=50))
def test_any_in_range_heart_rate_block_is_accepted(values: list[float]) -> None:
    block = hr_block(n=len(values), values=values)
    result = _validate(block)
    assert isinstance(result, AcceptedBlock)
    assert result.record["measurement"][1]["bpm"] == values


def test_envelope_and_foreign_participant() -> None:
    with pytest.raises(ApiError) as err:
        VALIDATOR.envelope({"blocks": [{}] * (LIMITS.max_blocks_per_request + 1)})
    assert err.value.status == 422 and err.value.error == "too_many_blocks"
    assert VALIDATOR.foreign_block([hr_block(), 5, {"participant_id": 7}, hr_block("P-2")], "P-000001") == 3


def test_biobank_validation() -> None:
    v = BiobankValidator(LIMITS, "s")
    event = assay_event()
    ok = v.validate(0, event, received_ms=now_ms())
    assert isinstance(ok, AcceptedEvent) and ok.record["payload"][0].endswith("AssayResult")
    again = v.validate(0, dict(event), received_ms=now_ms() + 1000)  # a retry later: same content, same hash
    assert isinstance(again, AcceptedEvent) and again.digest == ok.digest
    changed = v.validate(0, {**event, "payload": {**event["payload"], "value": 3.3}}, received_ms=now_ms())
    assert isinstance(changed, AcceptedEvent) and changed.digest != ok.digest  # different content, different hash
    for bad, path in ((assay_event(loinc_code="1988"), "payload.loinc_code"),
                      (assay_event(analyte="CRP", value=-1.0), "payload"),
                      ({**assay_event(), "recorded_at": "2000-01-01T00:00:00Z"}, "recorded_at"),
                      ({**assay_event(), "payload": {"kind": "consent", "action": "WITHDRAW", "status": "ACTIVE"}},
                       "payload"),
                      ({**assay_event(), "payload": {"kind": "consent", "action": "GRANT", "status": "ACTIVE",
                                                     "birth_date": 19700101}}, "payload.birth_date"),
                      ({**assay_event(), "payload": {"kind": "sample", "event_type": "ALIQUOTED",
                                                     "sample_id": "S1", "sample_type": "SER"}}, "payload")):
        result = v.validate(0, bad, received_ms=now_ms())
        assert isinstance(result, RejectedEvent), bad
        assert result.rejection.field_path == f"events[0].{path}", result.rejection


def test_loinc_check_digits() -> None:
    for code in ("1988-5", "30522-7", "8867-4", "2708-6", "8310-5", "41950-7", "59408-5", "55423-8", "93832-4"):
        number, check = code.split("-")
        assert loinc_check_digit(number) == int(check), code


def test_gunzip_limits() -> None:
    data = b"x" * 10_000
    assert gunzip_limited(gzip.compress(data), 10_000) == data
    assert gunzip_limited(gzip.compress(b"ab") + gzip.compress(b"cd"), 100) == b"abcd"  # multi-member
    with pytest.raises(ApiError) as err:
        gunzip_limited(gzip.compress(data), 9_999)
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        gunzip_limited(gzip.compress(data)[:-8], 100_000)
    assert err.value.status == 400


def test_a_gzip_bomb_small_as_sent_is_not_small_work() -> None:
    """The gateway decodes small bodies in its event loop and others in a thread: a bomb is small only as sent."""
    bomb = gzip.compress(b'{"blocks": [' + b" " * (8 * 1024 * 1024) + b"]}", 9)
    assert len(bomb) < 64 * 1024
    assert not decodes_within(bomb, "gzip", 64 * 1024)
    assert decodes_within(bomb, None, 64 * 1024)  # as identity, the bytes as sent are all there is
    assert decodes_within(gzip.compress(b"x" * 64 * 1024), "gzip", 64 * 1024)
    assert not decodes_within(gzip.compress(b"x" * (64 * 1024 + 1)), "x-gzip", 64 * 1024)
    assert not decodes_within(b"x" * (64 * 1024 + 1), None, 64 * 1024)
    assert decodes_within(b"not gzip", "gzip", 64 * 1024)  # refused with a 400 at once, wherever it is decoded


def test_a_gzip_body_may_inflate_a_hundredfold_and_always_to_a_mebibyte() -> None:
    limits = IngestSettings()
    assert limits.max_inflate_ratio == 100
    bomb = gzip.compress(b'{"blocks": [' + b" " * (20 * 1024 * 1024) + b"]}", 9)  # ~20 KiB inflating 1,000x
    with pytest.raises(ApiError) as err:
        decode_body(bomb, "gzip", limits)
    assert err.value.status == 413 and "100 times its compressed size" in err.value.body().detail
    zeros = b'{"values": [' + b"0," * 400_000 + b"0]}"  # constant readings: ~1,000x, but under 1 MiB decoded
    assert len(zeros) < 1024 * 1024 and len(gzip.compress(zeros)) * 100 < len(zeros)
    assert decode_body(gzip.compress(zeros), "gzip", limits) == zeros
    body = random.Random(5).randbytes(5 * 1024 * 1024)  # compresses little: only the decoded-size limit applies
    assert decode_body(gzip.compress(body), "gzip", limits) == body
    with pytest.raises(ApiError) as err:
        decode_body(gzip.compress(body), "gzip", IngestSettings(max_decoded_bytes=4 * 1024 * 1024))
    assert err.value.status == 413 and "exceeds 4194304 bytes" in err.value.body().detail


def test_tokens() -> None:
    issued, digest = new_token("csd")
    parsed = parse_token(issued.token)
    assert parsed is not None and parsed.key_id == issued.key_id and matches(digest, parsed.key_id, parsed.secret)
    assert not matches(digest, parsed.key_id, parsed.secret[:-1] + "x")
    assert parse_token("csd_xyz.abc") is None and parse_token(issued.token + ".") is None
    assert bearer_token("bearer  " + issued.token) == issued.token
    assert bearer_token("Basic abc") is None and bearer_token(None) is None


def test_field_paths_never_echo_made_up_keys() -> None:
    assert field_path("blocks[1]", ["values", 3]) == "blocks[1].values[3]"
    assert field_path("events[0]", ["P-000001"]) == "events[0].<unknown field>"


def test_csv_rows_map_to_events() -> None:
    event = row_to_event({"event_id": str(uuid.uuid4()), "participant_id": "P-1", "occurred_at": "x",
                          "kind": "sample", "event_type": "CENTRIFUGED", "centrifuge_g": "2000",
                          "centrifuge_braking": "no", "quantity": "", "freeze_thaw_count": "two",
                          "scope": ""})
    assert event["payload"] == {"kind": "sample", "event_type": "CENTRIFUGED", "freeze_thaw_count": "two",
                                "centrifugation": {"g_force": 2000.0, "braking": False}}
    consent = row_to_event({"kind": "consent", "scope": "DUO:0000006; DUO:0000019"})
    assert consent["payload"]["scope"] == ["DUO:0000006", "DUO:0000019"]


def test_token_bucket_allows_a_minutes_burst_then_refills_at_the_limit_rate() -> None:
    from clinstream.ingest.rate_limit import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(processes=2, clock=lambda: now[0])  # each process: half of 120 per minute
    assert all(buckets.take("requests", "k", 1, 120).allowed for _ in range(60))
    refused = buckets.take("requests", "k", 1, 120)
    assert not refused.allowed and refused.retry_after_s == 1 and refused.usage == 1.0
    assert buckets.take("requests", "other", 1, 120).allowed  # buckets are per credential
    now[0] += 1.0  # one token per second comes back (60 per minute per process)
    assert buckets.take("requests", "k", 1, 120).allowed
    assert not buckets.take("requests", "k", 1, 120).allowed
    waited = buckets.take("readings", "k", 50, 60)  # 30 tokens per minute per process: 50 never fit at once
    assert not waited.allowed
