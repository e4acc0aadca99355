"""The schema catalogue: docs, naming, the lock, real Avro resolution for compatibility, and plain decoding."""

from __future__ import annotations

import copy
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastavro import schemaless_writer

from clinstream.core.avro import get_codec
from clinstream.core.compat import IncompatibleSchema, check_catalogue, check_compatible, lint_schema
from clinstream.core.constants import AVRO_SINGLE_OBJECT_MAGIC
from clinstream.core.schemas import canonical, load_catalogue, parsed_standalone_of
from clinstream.core.timeutil import to_ms


def test_catalogue_passes_every_rule() -> None:
    assert check_catalogue(load_catalogue()) == []


def test_every_topic_schema_is_in_the_catalogue() -> None:
    from clinstream.core.topics import ALL_TOPICS

    cat = load_catalogue()
    for spec in ALL_TOPICS:
        assert spec.value_schema in cat.parsed


def _block_schema() -> dict:
    cat = load_catalogue()
    return json.loads(canonical(cat.parsed["org.clinstream.telemetry.TelemetryBlock"]))


def test_adding_an_optional_field_is_compatible() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"].append({"name": "firmware", "type": ["null", "string"], "default": None})
    check_compatible(json.dumps(old), json.dumps(new))


def test_removing_a_field_without_default_is_refused() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"] = [f for f in new["fields"] if f["name"] != "sequence"]
    with pytest.raises(IncompatibleSchema, match="old readers cannot read new data"):
        check_compatible(json.dumps(old), json.dumps(new))


def test_adding_a_required_field_is_refused() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"].append({"name": "firmware", "type": "string"})
    with pytest.raises(IncompatibleSchema, match="new schema cannot read old data"):
        check_compatible(json.dumps(old), json.dumps(new))


def test_lint_requires_docs_and_naming() -> None:
    problems: list[str] = []
    lint_schema("x.Bad", {"type": "record", "name": "bad_name", "fields": [
        {"name": "BadField", "type": "int"},
        {"name": "start_time", "type": "double", "doc": "seconds"},
    ]}, problems)
    text = "\n".join(problems)
    assert "PascalCase" in text and "has no doc" in text and "snake_case" in text
    assert "timestamp-millis" in text


def test_standalone_schemas_parse_alone() -> None:
    cat = load_catalogue()
    for name, parsed in cat.parsed.items():
        assert parsed_standalone_of(canonical(parsed)), name


def test_plain_decoding_reads_logical_types_as_their_underlying_values() -> None:
    codec = get_codec()
    name = "org.clinstream.telemetry.PseudonymisedTelemetryBlock"
    block_id = uuid.UUID(int=7)
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    data = codec.encode(name, {
        "block_id": str(block_id), "site_id": "s", "participant_pseudonym": "p" * 64, "device_pseudonym": "d" * 64,
        "key_version": 1, "sequence": 3, "start": start, "utc_offset_minutes": 60, "time_zone": "Europe/Oslo",
        "received_at": start + timedelta(seconds=65),
        "measurement": ("org.clinstream.telemetry.HeartRateSamples", {"offsets_ms": [0, 1000], "bpm": [61.0, 62.5]})})
    full, plain = codec.decode(data), codec.decode_plain(data)
    assert (full["block_id"], full["start"]) == (block_id, start)
    assert plain["block_id"] == str(block_id)
    assert (plain["start"], plain["received_at"]) == (to_ms(start), to_ms(start) + 65_000)
    assert {k: v for k, v in plain.items() if k not in ("block_id", "start", "received_at")} == {
        k: v for k, v in full.items() if k not in ("block_id", "start", "received_at")}


def test_plain_decoding_resolves_an_older_writer_into_the_reader_schema() -> None:
    """A block written with the released version before time_zone existed reads, plain, as the current version."""
    codec = get_codec()
    name = "org.clinstream.telemetry.PseudonymisedTelemetryBlock"
    cat = codec.catalogue
    older = [fp for fp, schema in cat.by_fingerprint.items()
             if schema.get("name") == name and fp != cat.fingerprint_of[name]]
    assert len(older) == 1
    writer = cat.by_fingerprint[older[0]]
    assert "time_zone" not in [f["name"] for f in writer["fields"]]
    buf = io.BytesIO()
    schemaless_writer(buf, writer, {
        "block_id": str(uuid.UUID(int=9)), "site_id": "s", "participant_pseudonym": "p" * 64,
        "device_pseudonym": "d" * 64, "key_version": 1, "sequence": 3, "start": 1_767_268_800_000,
        "utc_offset_minutes": 60, "received_at": 1_767_268_865_000,
        "measurement": ("org.clinstream.telemetry.HeartRateSamples", {"offsets_ms": [0], "bpm": [61.0]})})
    data = AVRO_SINGLE_OBJECT_MAGIC + older[0] + buf.getvalue()
    plain = codec.decode_plain(data, reader=name)
    assert plain["time_zone"] is None
    assert (plain["block_id"], plain["start"], plain["received_at"]) == (
        str(uuid.UUID(int=9)), 1_767_268_800_000, 1_767_268_865_000)
    assert {k: v for k, v in plain.items() if k not in ("block_id", "start", "received_at")} == {
        k: v for k, v in codec.decode(data, reader=name).items() if k not in ("block_id", "start", "received_at")}


def test_plain_encoding_gives_the_bytes_of_logical_encoding() -> None:
    """encode_plain and encode_many(plain=True) take epoch-ms ints and a string UUID, and write the same bytes."""
    codec = get_codec()
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    block_id = uuid.uuid4()
    logical = {
        "block_id": block_id, "site_id": "s", "participant_pseudonym": "p" * 64, "device_pseudonym": "d" * 64,
        "key_version": 1, "sequence": 3, "start": start, "utc_offset_minutes": 60, "time_zone": None,
        "received_at": start + timedelta(seconds=65),
        "measurement": ("org.clinstream.telemetry.HeartRateSamples", {"offsets_ms": [0, 1000], "bpm": [61.0, 62.5]})}
    plain = {**logical, "block_id": str(block_id), "start": to_ms(start), "received_at": to_ms(start) + 65_000}
    name = "org.clinstream.telemetry.PseudonymisedTelemetryBlock"
    expected = codec.encode(name, logical)
    assert codec.encode_plain(name, plain) == expected
    assert codec.encode_many(name, [plain, plain], plain=True) == [expected, expected]
    assert codec.decode(expected)["start"] == start
