"""Pure logic of the ingest re-drive: the request context on dead letters, and the gateway's record rebuilt exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import (
    DLQ_HEADER_REASON,
    DLQ_HEADER_STAGE,
    HEADER_INGEST_DEVICE_ID,
    HEADER_INGEST_ENDPOINT,
    HEADER_INGEST_PARTICIPANT_ID,
    HEADER_INGEST_RECEIVED_AT,
    HEADER_REDRIVEN_FROM,
)
from clinstream.core.dead_letters import DeadLetterRecord
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import Message
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY, Stage
from clinstream.ingest.biobank_intake import EVENT_ID_CONFLICT
from clinstream.ingest.biobank_validate import AcceptedEvent, BiobankValidator
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.csv_import import read_rows
from clinstream.ingest.dlq_context import (
    biobank_context,
    context_headers,
    read_context,
    telemetry_context,
)
from clinstream.ingest.gateway_db import DevicePrincipal
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.redrive import (
    FOREIGN_PARTICIPANT,
    NO_CONTEXT,
    IngestRedriver,
    csv_event,
    item_prefix,
    make_redriver,
)
from clinstream.ingest.telemetry_intake import DUPLICATE_IN_REQUEST, TelemetryIntake
from clinstream.replay.dlq import decode_envelope, safe_view
from clinstream.replay.redrive import redriver_for

RECEIVED = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
STRICT = IngestSettings(max_future_skew_s=300)
RELAXED = IngestSettings(max_future_skew_s=3600)
DEVICE = DevicePrincipal("0123456789abcdef", "SIM-DEV-0042", "P-000042")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _block(start_ms: int, *, n: int = 21, step_ms: int = MIN, participant: str = "P-000042",
           **overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"block_id": str(uuid.uuid4()), "participant_id": participant, "sequence": 7,
                             "start": _iso(start_ms), "utc_offset_minutes": 60, "schema": "heart-rate",
                             "unit": "beats/min", "offsets_ms": [i * step_ms for i in range(n)],
                             "values": [60.5 + i % 5 for i in range(n)]}
    block.update(overrides)
    return block


def _settings() -> Settings:
    return Settings(site_id="t" + uuid.uuid4().hex[:10])  # type: ignore[call-arg]


def _intake(site: str, limits: IngestSettings) -> TelemetryIntake:
    return TelemetryIntake(site, limits, None, GatewayMetrics())  # type: ignore[arg-type]  # prepare() never produces


def _record(msg: Message, offset: int = 0) -> DeadLetterRecord:
    _, value, headers = msg
    return DeadLetterRecord(0, offset, 0, tuple((k, bytes(v or b"")) for k, v in headers or []),
                            decode_envelope(get_codec(), value), value)


class MemoryLedger:
    """An in-memory event-id ledger (the real one is exercised against PostgreSQL in the integration test)."""

    def __init__(self, known: dict[str, bytes] | None = None) -> None:
        self.rows = dict(known or {})
        self.recorded: list[tuple[str, bytes, str]] = []

    def known(self, event_id: str) -> bytes | None:
        return self.rows.get(event_id)

    def record(self, events: list[tuple[str, bytes, str]]) -> None:
        self.recorded.extend(events)
        for event_id, digest, _ in events:
            self.rows.setdefault(event_id, digest)

    def close(self) -> None:
        pass


def test_context_headers_round_trip_and_refuse_incomplete_ones() -> None:
    tele = telemetry_context(RECEIVED, "SIM-DEV-0042", "P-000042")
    assert read_context(context_headers(tele)) == tele
    bio = biobank_context(RECEIVED, "csv-import")
    assert read_context(context_headers(bio)) == bio
    assert dict(context_headers(tele))[HEADER_INGEST_RECEIVED_AT] == b"1767225600000"
    full = context_headers(tele)
    assert read_context([]) is None
    assert read_context([h for h in full if h[0] != HEADER_INGEST_DEVICE_ID]) is None  # no device: incomplete
    assert read_context([h for h in full if h[0] != HEADER_INGEST_PARTICIPANT_ID]) is None
    assert read_context([(HEADER_INGEST_ENDPOINT, b"telemetry"), (HEADER_INGEST_RECEIVED_AT, b"12x"),
                         *full[2:]]) is None
    assert read_context([(HEADER_INGEST_ENDPOINT, b"other"), *full[1:]]) is None
    assert read_context([*full[:1], (HEADER_INGEST_RECEIVED_AT, b"\xff"), *full[1:]]) is None
    assert read_context([*full, (HEADER_INGEST_DEVICE_ID, b"SIM-DEV-9999")]) == tele  # the first one counts


def test_dead_letter_extra_headers_follow_the_stage_and_reason_headers() -> None:
    extra = context_headers(telemetry_context(RECEIVED, "SIM-DEV-0042", "P-000042"))
    _, _, headers = dead_letter(get_codec(), site_id="s", stage=Stage.INGEST, rejection=Rejection("why"),
                                original_value=b"{}", extra_headers=extra)
    assert list(headers or []) == [(DLQ_HEADER_STAGE, b"ingest"), (DLQ_HEADER_REASON, b"why"), *extra]
    _, _, plain = dead_letter(get_codec(), site_id="s", stage=Stage.INGEST, rejection=Rejection("why"),
                              original_value=b"{}")
    assert [name for name, _ in plain or []] == [DLQ_HEADER_STAGE, DLQ_HEADER_REASON]  # unchanged by default


def test_telemetry_dead_letters_carry_the_request_context() -> None:
    site = "t" + uuid.uuid4().hex[:10]
    skewed = _block(RECEIVED - MIN)  # samples up to 19 min after the receipt
    prepared = _intake(site, STRICT).prepare({"blocks": [_block(RECEIVED - 30 * MIN), skewed]}, DEVICE, RECEIVED)
    assert len(prepared.raw) == 1 and len(prepared.dead) == 1
    rec = _record(prepared.dead[0])
    assert read_context(rec.headers) == telemetry_context(RECEIVED, DEVICE.device_id, DEVICE.participant_id)
    assert rec.field_path == "blocks[1].start" and "future" in rec.reason


def test_telemetry_redrive_rebuilds_the_gateway_record_byte_for_byte() -> None:
    s = _settings()
    blocks = [_block(RECEIVED - 30 * MIN), _block(RECEIVED - MIN), _block(RECEIVED - 2 * MIN, utc_offset_minutes=-300)]
    body = {"blocks": blocks}
    dead = _intake(s.site_id, STRICT).prepare(body, DEVICE, RECEIVED).dead
    assert len(dead) == 2
    now = _intake(s.site_id, RELAXED).prepare(body, DEVICE, RECEIVED)  # what the gateway produces under the fix
    assert len(now.raw) == 3 and not now.dead

    still = IngestRedriver(s, STRICT, MemoryLedger())  # the rule not relaxed yet: rejected again, same reason
    for msg in dead:
        rec = _record(msg)
        verdict = still.judge(rec)
        assert verdict.rejection == Rejection(rec.reason, rec.field_path)

    redriver = IngestRedriver(s, RELAXED, MemoryLedger())
    for i, msg in enumerate(dead):
        rec = _record(msg, offset=10 + i)
        verdict = redriver.judge(rec)
        assert verdict.ok and not verdict.duplicate
        [(topic, (key, value, headers))] = verdict.messages
        assert topic == RAW_TELEMETRY.name(s.site_id)
        assert (key, value) == now.raw[1 + i][:2]  # byte for byte, key included
        assert list(headers or []) == [(HEADER_REDRIVEN_FROM, f"ingest:0:{10 + i}".encode())]
        decoded = get_codec().decode(value)
        assert decoded["device_id"] == DEVICE.device_id and decoded["received_at"].timestamp() * 1000 == RECEIVED
        assert key == subject_key(s.site_id, DEVICE.participant_id)
    again = redriver.judge(_record(dead[0], offset=99))  # the same block dead-lettered twice: handed back once
    assert again.ok and again.duplicate and not again.messages


def test_telemetry_redrive_keeps_what_it_cannot_or_must_not_resend() -> None:
    s = _settings()
    redriver = IngestRedriver(s, RELAXED, MemoryLedger())
    block = _block(RECEIVED - MIN)
    codec = get_codec()
    ctx = context_headers(telemetry_context(RECEIVED, DEVICE.device_id, DEVICE.participant_id))

    def letter(reason: str, path: str, raw: Any, headers: list[tuple[str, bytes]]) -> DeadLetterRecord:
        return _record(dead_letter(codec, site_id=s.site_id, stage=Stage.INGEST, rejection=Rejection(reason, path),
                                   original_value=orjson.dumps(raw), content_type="application/json",
                                   extra_headers=headers))

    old = redriver.judge(letter("samples lie in the future", "blocks[0].start", block, []))
    assert old.rejection == Rejection(NO_CONTEXT)
    dup = redriver.judge(letter(DUPLICATE_IN_REQUEST, "blocks[3].block_id", block, ctx))
    assert dup.rejection == Rejection(DUPLICATE_IN_REQUEST, "blocks[3].block_id")
    foreign = redriver.judge(letter("x", "blocks[2].start", {**block, "participant_id": "P-000043"}, ctx))
    assert foreign.rejection == Rejection(FOREIGN_PARTICIPANT, "blocks[2].participant_id")
    invalid = redriver.judge(letter("x", "blocks[5].values[0]", {**block, "values": [400.0] * 21}, ctx))
    assert invalid.rejection is not None and invalid.rejection.field_path == "blocks[5].values[0]"
    assert "plausible range" in invalid.rejection.reason


def _event(event_id: str, occurred_ms: int, value: float = 3.2) -> dict[str, Any]:
    return {"event_id": event_id, "participant_id": "P-000042", "occurred_at": _iso(occurred_ms),
            "payload": {"kind": "assay", "sample_id": "SMP-1-01", "analyte": "CRP", "loinc_code": "1988-5",
                        "value": value, "unit": "mg/L"}}


def test_biobank_redrive_is_idempotent_by_event_id() -> None:
    s = _settings()
    codec = get_codec()
    ctx = context_headers(biobank_context(RECEIVED, "0123456789abcdef"))
    ids = [str(uuid.uuid4()) for _ in range(3)]

    def letter(event: dict[str, Any], offset: int) -> DeadLetterRecord:
        return _record(dead_letter(codec, site_id=s.site_id, stage=Stage.INGEST,
                                   rejection=Rejection("occurred_at lies in the future", "events[1].occurred_at"),
                                   original_value=orjson.dumps(event), content_type="application/json",
                                   extra_headers=ctx), offset)

    future = RECEIVED + 20 * MIN
    validator = BiobankValidator(RELAXED, s.site_id)
    known = validator.validate(0, _event(ids[1], future), received_ms=RECEIVED)  # accepted meanwhile
    other = validator.validate(0, _event(ids[2], future, value=9.9), received_ms=RECEIVED)  # other content
    assert isinstance(known, AcceptedEvent) and isinstance(other, AcceptedEvent)
    ledger = MemoryLedger({ids[1]: known.digest, ids[2]: other.digest})
    redriver = IngestRedriver(s, RELAXED, ledger)

    new = redriver.judge(letter(_event(ids[0], future), 1))
    [(topic, (key, value, _))] = new.messages
    assert topic == RAW_BIOBANK.name(s.site_id) and key == subject_key(s.site_id, "P-000042")
    record = codec.decode(value)
    assert str(record["event_id"]) == ids[0] and record["recorded_at"].timestamp() * 1000 == RECEIVED
    assert redriver.judge(letter(_event(ids[0], future), 2)).duplicate  # same event twice in one run: once
    assert redriver.judge(letter(_event(ids[1], future), 3)).duplicate  # accepted by the gateway meanwhile
    assert redriver.judge(letter(_event(ids[2], future), 4)).rejection == Rejection(EVENT_ID_CONFLICT,
                                                                                   "events[1].event_id")
    assert ledger.recorded == []  # nothing recorded before the broker acknowledged
    redriver.delivered()
    assert [(e, k) for e, _, k in ledger.recorded] == [(ids[0], "0123456789abcdef")]
    assert IngestRedriver(s, STRICT, MemoryLedger()).judge(letter(_event(ids[0], future), 5)).rejection is not None


def test_csv_dead_letters_parse_like_the_import(tmp_path: Path) -> None:
    path = tmp_path / "lims.csv"
    path.write_text("event_id,participant_id,kind,occurred_at,sample_id,analyte,loinc_code,value,unit,comment\n"
                    f"{uuid.uuid4()},P-000042,assay,{_iso(RECEIVED)},SMP-1-01,CRP,1988-5,3.2,mg/L,\"a, b\nc\"\n"
                    f"{uuid.uuid4()},P-000042,assay,{_iso(RECEIVED)},SMP-1-01,CRP,1988-5,x,mg/L,,extra\n",
                    encoding="utf-8")
    rows = list(read_rows(path))
    assert len(rows) == 2
    for row in rows:
        assert csv_event(row.original) == row.event
    with pytest.raises(ValueError):
        csv_event(b"event_id\n")


def test_item_prefix_and_plugin() -> None:
    assert item_prefix("blocks[12].values[3]", "blocks[0]") == ("blocks[12]", 12)
    assert item_prefix("rows[7].payload.value", "rows[0]") == ("rows[7]", 7)
    assert item_prefix(None, "events[0]") == ("events[0]", 0)
    s = _settings()
    assert isinstance(make_redriver(s), IngestRedriver)
    assert isinstance(redriver_for(s, Stage.INGEST), IngestRedriver)


def test_show_lists_context_header_names_but_values_only_with_the_payload() -> None:
    prepared = _intake("t" + uuid.uuid4().hex[:10], STRICT).prepare({"blocks": [_block(RECEIVED - MIN)]}, DEVICE,
                                                                    RECEIVED)
    rec = _record(prepared.dead[0])
    view = safe_view(rec, Stage.INGEST, show_payload=False)
    assert HEADER_INGEST_DEVICE_ID in view["headers"] and HEADER_INGEST_PARTICIPANT_ID in view["headers"]
    assert DEVICE.device_id not in str(view) and DEVICE.participant_id not in str(view)
    full = safe_view(rec, Stage.INGEST, show_payload=True)
    assert full["header_values"][HEADER_INGEST_DEVICE_ID] == DEVICE.device_id
