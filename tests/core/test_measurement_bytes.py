"""The measurement check: what it accepts fastavro decodes to the end with the same length; valid bytes pass."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from clinstream.core.avro import get_codec
from clinstream.core.measurement_bytes import (
    NUMPY_DTYPE,
    MeasurementChecker,
    MeasurementError,
    zigzag_varints,
)

UNION = get_codec().catalogue.parsed["org.clinstream.telemetry.TelemetryBlock"]["fields"][-1]["type"]
SCHEMA = parse_schema(UNION)
CHECKER = MeasurementChecker(UNION)
NS = "org.clinstream.telemetry."
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_ARRAYS: dict[str, tuple[tuple[str, Any], ...]] = {
    "HeartRateSamples": (("offsets_ms", INT32), ("bpm", FLOAT32)),
    "RRIntervalSamples": (("offsets_ms", INT32), ("rr_ms", FLOAT32)),
    "StepCountSamples": (("offsets_ms", INT32), ("durations_s", INT32), ("steps", INT32)),
    "OxygenSaturationSamples": (("offsets_ms", INT32), ("spo2_percent", FLOAT32)),
    "SkinTemperatureSamples": (("offsets_ms", INT32), ("celsius", FLOAT32)),
    "AccelerationSamples": (("offsets_ms", INT32), ("x", FLOAT32), ("y", FLOAT32), ("z", FLOAT32)),
}


@st.composite
def measurements(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid measurement of any array-only branch (skin temperature with its location enum)."""
    name = draw(st.sampled_from(sorted(_ARRAYS)))
    n = draw(st.integers(0, 80))
    record: dict[str, Any] = {field: draw(st.lists(items, min_size=n, max_size=n)) for field, items in _ARRAYS[name]}
    if name == "SkinTemperatureSamples":
        record["location"] = draw(st.sampled_from(["WRIST", "FINGER", "CHEST", "OTHER"]))
    return NS + name, record


def encode(measurement: tuple[str, dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMA, measurement)
    return buf.getvalue()


def fastavro_length(data: bytes) -> int | None:
    """The array length fastavro reads from bytes decoded exactly to their end with equal arrays, else None."""
    buf = io.BytesIO(data)
    try:
        _, record = schemaless_reader(buf, SCHEMA, None, return_record_name=True)
    except Exception:  # fastavro raises many types on corrupt bytes
        return None
    lengths = {len(v) for v in record.values() if isinstance(v, list)}
    if buf.tell() != len(data) or len(lengths) > 1:
        return None
    return lengths.pop() if lengths else 0


@settings(max_examples=300, deadline=None)
@given(measurements())
def test_valid_measurements_pass_with_their_length(measurement: tuple[str, dict[str, Any]]) -> None:
    data = encode(measurement)
    assert CHECKER.readings(data) == len(measurement[1]["offsets_ms"]) == fastavro_length(data)


@settings(max_examples=500, deadline=None)
@given(measurements(), st.data())
def test_whatever_it_accepts_fastavro_reads_to_the_end_with_that_length(
        measurement: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    """Corruptions of valid bytes: cut, extended, bytes overwritten or inserted (one to three edits)."""
    raw = bytearray(encode(measurement))
    for _ in range(data.draw(st.integers(1, 3))):
        edit = data.draw(st.sampled_from(["cut", "append", "overwrite", "insert"]))
        at = data.draw(st.integers(0, len(raw)))
        byte = data.draw(st.integers(0, 255))
        if edit == "cut":
            del raw[at:]
        elif edit == "append":
            raw.append(byte)
        elif edit == "overwrite" and at < len(raw):
            raw[at] = byte
        else:
            raw.insert(at, byte)
    corrupt = bytes(raw)
    try:
        readings = CHECKER.readings(corrupt)
    except MeasurementError:
        return
    if readings is not None:  # None: a branch left to fastavro (sleep episodes)
        assert fastavro_length(corrupt) == readings


def test_arrays_written_in_several_blocks_are_counted_whole() -> None:
    """Avro lets a writer split an array into blocks; a negative count is followed by the block's size in bytes."""
    offsets = b"\x03\x04" + b"\x02\x04" + b"\x02" + b"\x06" + b"\x00"  # -2 items in 2 bytes: 1, 2; 1 item: 3; end
    bpm = b"\x06" + b"\x00" * 12 + b"\x00"
    data = b"\x00" + offsets + bpm
    assert CHECKER.readings(data) == 3 == fastavro_length(data)


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x00\x02\x80\x80\x80\x80\x80\x01\x00\x02\x00\x00\x00\x00\x00", "array's numbers"),  # a 6-byte int
    (b"\x00\x02\x80\x80\x80\x80\x10\x00\x02\x00\x00\x00\x00\x00", "array's numbers"),  # beyond int32
    (b"\x00\x02\x00\x00\x02\x00\x00\x00", "end inside an array"),  # a float cut short
    (b"\x00\x02\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00", "differ in length"),
    (b"\x00\x00\x00\x00", "trailing bytes"),
    (b"\x7e\x00\x00", "unknown measurement type"),
    (b"\x08\x00\x00\x08", "enum symbol out of range"),  # skin temperature, location 4 of 4 symbols
    (b"\x08\x00\x00\x01", "enum symbol out of range"),  # location -1
    (b"\x00\xfe\xff\xff\xff\x0f", "end inside an array"),  # a count far beyond the bytes
])
def test_malformed_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MeasurementError, match=reason):
        CHECKER.readings(data)


def test_sleep_episodes_are_left_to_the_caller() -> None:
    episode = {"start_offset_ms": 0, "end_offset_ms": 28_800_000, "total_sleep_time_min": 420.0,
               "wake_after_sleep_onset_min": 30.0, "latency_to_sleep_onset_min": 12.0, "number_of_awakenings": 3,
               "is_main_sleep": True}
    assert CHECKER.readings(encode((NS + "SleepEpisodes", {"episodes": [episode]}))) is None


@settings(max_examples=300, deadline=None)
@given(measurements())
def test_the_spans_of_valid_measurements_hold_their_arrays(measurement: tuple[str, dict[str, Any]]) -> None:
    """Each array's span decodes (varints at once in numpy, floats in place) to the values fastavro reads."""
    data = encode(measurement)
    _, record = schemaless_reader(io.BytesIO(data), SCHEMA, None, return_record_name=True)
    scan = CHECKER.scan(data)
    assert scan is not None and scan.contiguous and scan.name == measurement[0]
    assert sorted(scan.arrays) == sorted(k for k, v in record.items() if isinstance(v, list))
    for name, span in scan.arrays.items():
        items = data[span.start:span.end]
        got = zigzag_varints(items) if span.kind in ("int", "long") else np.frombuffer(items, NUMPY_DTYPE[span.kind])
        assert span.items == len(got) == len(record[name])
        assert np.array_equal(got, np.asarray(record[name], dtype=got.dtype), equal_nan=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=200))
def test_zigzag_varints_decodes_what_avro_encodes(numbers: list[int]) -> None:
    buf = io.BytesIO()
    for n in numbers:
        schemaless_writer(buf, "long", n)
    assert zigzag_varints(buf.getvalue()).tolist() == numbers


def test_zigzag_varints_refuses_bytes_that_end_inside_a_number() -> None:
    with pytest.raises(ValueError, match="inside a number"):
        zigzag_varints(b"\x02\x80")
