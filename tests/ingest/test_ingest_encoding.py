"""The gateway's block encoder writes the same bytes fastavro writes for every accepted block of a request."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import MIN, hr_block, now_ms

from clinstream.core.avro import get_codec
from clinstream.core.topics import RAW_TELEMETRY
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.telemetry_encoding import TelemetryEncoder
from clinstream.ingest.telemetry_validate import AcceptedBlock, Columns, TelemetryValidator

LIMITS = IngestSettings()
VALIDATOR = TelemetryValidator(LIMITS, "site-t")
CODEC = get_codec()
ENCODER = TelemetryEncoder(CODEC)
_RANGES = {"heart-rate": ("beats/min", LIMITS.hr_min_bpm, LIMITS.hr_max_bpm),
           "rr-interval": ("ms", LIMITS.rr_min_ms, LIMITS.rr_max_ms),
           "oxygen-saturation": ("%", LIMITS.spo2_min_percent, LIMITS.spo2_max_percent),
           "body-temperature": ("Cel", LIMITS.skin_min_c, LIMITS.skin_max_c)}


@st.composite
def raw_blocks(draw: st.DrawFn) -> dict[str, Any]:
    """A valid JSON block of any kind the gateway takes, values anywhere in their plausible range."""
    kind = draw(st.sampled_from([*_RANGES, "step-count", "acceleration", "sleep-episode"]))
    n = draw(st.integers(1, 90))
    offsets = sorted(draw(st.sets(st.integers(0, 3_599_000), min_size=n, max_size=n)))
    start = now_ms() - 2 * 60 * MIN
    block = hr_block(start_ms=start, sequence=draw(st.integers(0, 2**40)), schema=kind, offsets_ms=offsets,
                     utc_offset_minutes=draw(st.integers(-840, 840)))
    if kind in _RANGES:
        unit, lo, hi = _RANGES[kind]
        numbers = st.one_of(st.floats(lo, hi), st.integers(int(lo) + 1, int(hi)))
        block.update(unit=unit, values=draw(st.lists(numbers, min_size=n, max_size=n)))
        if kind == "body-temperature" and draw(st.booleans()):
            block["location"] = draw(st.sampled_from(["wrist", "finger", "chest", "other"]))
    elif kind == "step-count":
        block.update(unit="steps", offsets_ms=[i * 60_000 for i in range(n)], durations_s=[60] * n,
                     values=draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)))
    elif kind == "acceleration":
        del block["values"]
        axis = st.lists(st.floats(-LIMITS.accel_max_m_s2, LIMITS.accel_max_m_s2), min_size=n, max_size=n)
        block.update(unit="m/s2", x=draw(axis), y=draw(axis), z=draw(axis))
    else:
        for key in ("unit", "offsets_ms", "values"):
            del block[key]
        block["episodes"] = [{"start_offset_ms": 0, "end_offset_ms": 60 * MIN, "total_sleep_time_min": 50.0,
                              "wake_after_sleep_onset_min": 5.0, "latency_to_sleep_onset_min": 4.0,
                              "number_of_awakenings": 1, "is_main_sleep": False}]
    return block


def accepted(blocks: list[dict[str, Any]]) -> list[AcceptedBlock]:
    received = now_ms()
    out = [VALIDATOR.validate(i, b, device_id="DEV-1", received_ms=received, time_zone="Europe/Berlin")
           for i, b in enumerate(blocks)]
    assert all(isinstance(r, AcceptedBlock) for r in out), out
    return out  # type: ignore[return-value]


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_blocks(), min_size=1, max_size=12))
def test_every_accepted_block_is_written_as_fastavro_writes_it(blocks: list[dict[str, Any]]) -> None:
    """A request of mixed kinds: each value equals fastavro's encoding of the block's record."""
    request = accepted(blocks)
    got = ENCODER.encode(request)
    assert got == [CODEC.encode(RAW_TELEMETRY.value_schema, b.record) for b in request]


def test_blocks_with_columns_take_the_columnar_path() -> None:
    """Heart-rate blocks carry their columns from validation (else this module would test fastavro alone)."""
    (block,) = accepted([hr_block(n=5)])
    assert block.columns is not None and block.columns.offsets_ms.tolist() == [0, 1000, 2000, 3000, 4000]


def test_values_avro_floats_cannot_hold_are_refused_not_made_infinite() -> None:
    """Columns of a block the validator would refuse (its ranges are far inside float32): the encoder raises, as
    fastavro does, and the intake then dead-letters the block."""
    (block,) = accepted([hr_block(n=2)])
    forged = dataclasses.replace(block, columns=Columns(np.array([0, 1], dtype=np.int64),
                                                        np.array([60.0, -1e39], dtype=np.float64)))
    with pytest.raises(ValueError, match="float"):
        ENCODER.encode([forged])
