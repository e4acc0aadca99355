"""The batch block reader gives, for every input, the block or the refusal of the one-by-one reference decoder."""

from __future__ import annotations

import dataclasses
import io
import uuid
from typing import Any

import numpy as np
from fastavro import schemaless_writer
from features_factories import MIN, NS, T0, pseudonym
from hypothesis import given, settings
from hypothesis import strategies as st

from clinstream.core.avro import DecodeError, get_codec
from clinstream.core.constants import AVRO_SINGLE_OBJECT_MAGIC
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.features.block_batch import BlockBatchReader
from clinstream.features.blocks import Block, BlockError, decode_block

CODEC = get_codec()
SKEW_MS = 5 * MIN
READER = BlockBatchReader(CODEC, SKEW_MS)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
VALID_OFFSETS = st.integers(0, 3_600_000)
ANY_INT32 = st.integers(-(2**31), 2**31 - 1)
_VALUES = {"HeartRateSamples": "bpm", "RRIntervalSamples": "rr_ms", "OxygenSaturationSamples": "spo2_percent",
           "SkinTemperatureSamples": "celsius"}
_KINDS = [*_VALUES, "StepCountSamples", "AccelerationSamples", "SleepEpisodes"]


@st.composite
def measurements(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Any measurement kind; in one block of four, offsets may be negative (and steps in one step block of four)."""
    kind = draw(st.sampled_from(_KINDS))
    n = draw(st.integers(0, 70))
    offsets = draw(st.lists(draw(st.sampled_from([VALID_OFFSETS] * 3 + [ANY_INT32])), min_size=n, max_size=n))
    if draw(st.booleans()):
        offsets.sort()
    if kind == "SleepEpisodes":
        episodes = [{"start_offset_ms": s, "end_offset_ms": s + d, "total_sleep_time_min": d / MIN,
                     "wake_after_sleep_onset_min": 0.0, "latency_to_sleep_onset_min": 0.0,
                     "number_of_awakenings": 0, "is_main_sleep": True}
                    for s, d in draw(st.lists(st.tuples(st.integers(0, 10**8), st.integers(0, 10**7)), max_size=3))]
        return NS + kind, {"episodes": episodes}
    body: dict[str, Any] = {"offsets_ms": offsets}
    if kind == "StepCountSamples":
        counts = draw(st.sampled_from([st.integers(0, 500)] * 3 + [ANY_INT32]))
        body["durations_s"] = draw(st.lists(counts, min_size=n, max_size=n))
        body["steps"] = draw(st.lists(counts, min_size=n, max_size=n))
    elif kind == "AccelerationSamples":
        for axis in "xyz":
            body[axis] = draw(st.lists(FLOAT32, min_size=n, max_size=n))
    else:
        body[_VALUES[kind]] = draw(st.lists(FLOAT32, min_size=n, max_size=n))
        if kind == "SkinTemperatureSamples":
            body["location"] = draw(st.sampled_from(["WRIST", "FINGER", "CHEST", "OTHER"]))
    return NS + kind, body


@st.composite
def block_values(draw: st.DrawFn) -> bytes:
    """An encoded block of the current schema: valid or with a bad time zone, offset, clock or byte."""
    start = T0 + draw(st.integers(0, 10**9))
    record = {
        "block_id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))), "site_id": "site-t",
        "participant_pseudonym": pseudonym(f"p{draw(st.integers(0, 3))}"), "device_pseudonym": pseudonym("d"),
        "key_version": 1, "sequence": draw(st.integers(0, 2**40)), "start": start,
        "utc_offset_minutes": draw(st.sampled_from([0, 60, -300, 330, 18 * 60, 18 * 60 + 1, -18 * 60 - 30])),
        "time_zone": draw(st.sampled_from([None, "Europe/Berlin", "Asia/Kolkata", "Mars/Olympus_Mons"])),
        "received_at": start + draw(st.sampled_from([0, 2 * 3_600_000, 10**9])),
        "measurement": draw(measurements()),
    }
    value = bytearray(CODEC.encode(PSEUDO_TELEMETRY.value_schema, record))
    edit = draw(st.sampled_from(["none"] * 6 + ["cut", "append", "overwrite"]))
    at = draw(st.integers(0, len(value) - 1))
    if edit == "cut":
        del value[at:]
    elif edit == "append":
        value.append(draw(st.integers(0, 255)))
    elif edit == "overwrite":
        value[at] = draw(st.integers(0, 255))
    return bytes(value)


def reference(value: bytes) -> Block | BlockError | DecodeError:
    try:
        return decode_block(CODEC, value, SKEW_MS)
    except (BlockError, DecodeError) as exc:
        return exc


def assert_same_block(got: Block, want: Block) -> None:
    for f in dataclasses.fields(Block):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), f.name
        else:
            assert a == b and type(a) is type(b), f.name


def assert_same_outcome(got: Block | BlockError | DecodeError, want: Block | BlockError | DecodeError,
                        value: bytes) -> None:
    if isinstance(want, Block) and isinstance(got, BlockError) and got.field_path == "measurement":
        # stricter than fastavro, and only on bytes no encoder writes (over-long numbers, trailing bytes)
        assert CODEC.encode(PSEUDO_TELEMETRY.value_schema, CODEC.decode(value)) != value
        return
    assert type(got) is type(want), (got, want)
    if isinstance(want, Block):
        assert isinstance(got, Block)
        assert_same_block(got, want)
    elif isinstance(want, BlockError):
        assert isinstance(got, BlockError)
        assert (got.reason, got.field_path) == (want.reason, want.field_path)
    else:
        assert str(got) == str(want)


@settings(max_examples=400, deadline=None)
@given(st.lists(block_values(), min_size=1, max_size=12))
def test_every_block_is_decoded_or_refused_as_the_reference_does(values: list[bytes]) -> None:
    """One batch of mixed, partly corrupt blocks: each outcome equals `decode_block`'s for that block alone."""
    for value, got in zip(values, READER.read(values), strict=True):
        assert_same_outcome(got, reference(value), value)


def test_arrays_in_several_avro_blocks_and_older_writers_decode_as_the_reference_does() -> None:
    cat = CODEC.catalogue
    older = [fp for fp, schema in cat.by_fingerprint.items()
             if schema.get("name") == PSEUDO_TELEMETRY.value_schema and fp != cat.fingerprint_of[schema["name"]]]
    record = {"block_id": str(uuid.UUID(int=7)), "site_id": "site-t", "participant_pseudonym": pseudonym("p"),
              "device_pseudonym": pseudonym("d"), "key_version": 1, "sequence": 3, "start": T0,
              "utc_offset_minutes": 60, "received_at": T0 + MIN,
              "measurement": (NS + "HeartRateSamples", {"offsets_ms": [0, 1000, 2000], "bpm": [61.0, 62.0, 63.0]})}
    buf = io.BytesIO()
    schemaless_writer(buf, cat.by_fingerprint[older[0]], record)
    old = AVRO_SINGLE_OBJECT_MAGIC + older[0] + buf.getvalue()
    current = CODEC.encode(PSEUDO_TELEMETRY.value_schema, {**record, "time_zone": None})
    whole = _hr_measurement(b"\x06" + b"\x00\xd0\x0f\xa0\x1f" + b"\x00")  # 3 items: 0, 1000, 2000
    assert current.endswith(whole)
    # the same offsets in two Avro blocks: -2 items in 3 bytes (0, 1000), then 1 item (2000), then the end
    split = current[:-len(whole)] + _hr_measurement(b"\x03\x06\x00\xd0\x0f" + b"\x02\xa0\x1f" + b"\x00")
    got = READER.read([old, split])
    for value, outcome in zip([old, split], got, strict=True):
        want = reference(value)
        assert isinstance(want, Block) and isinstance(outcome, Block)
        assert_same_block(outcome, want)
        assert outcome.t_ms.tolist() == [T0, T0 + 1000, T0 + 2000]


def _hr_measurement(offsets: bytes) -> bytes:
    """Heart-rate measurement bytes: branch 0, the given offsets array, then bpm 61, 62, 63 as float32."""
    bpm = np.array([61.0, 62.0, 63.0], dtype="<f4").tobytes()
    return b"\x00" + offsets + b"\x06" + bpm + b"\x00"


def test_an_empty_batch_and_a_batch_without_samples() -> None:
    assert READER.read([]) == []
    accel = CODEC.encode(PSEUDO_TELEMETRY.value_schema, {
        "block_id": str(uuid.UUID(int=1)), "site_id": "site-t", "participant_pseudonym": pseudonym("p"),
        "device_pseudonym": pseudonym("d"), "key_version": 1, "sequence": 1, "start": T0, "utc_offset_minutes": 0,
        "time_zone": None, "received_at": T0,
        "measurement": (NS + "AccelerationSamples", {"offsets_ms": [0], "x": [0.1], "y": [0.2], "z": [0.3]})})
    (block,) = READER.read([accel])
    assert isinstance(block, Block) and block.size == 0
