"""Folding the heart-rate blocks of one participant as one partial per window gives exactly what folding each block
alone gives: the same feature, late and dead-letter records (byte for byte, in order), counters and state."""

from __future__ import annotations

from typing import Any

import pytest
from features_factories import (
    MIN,
    T0,
    block,
    hr_body,
    in_records,
    pseudonym,
    rr_body,
    steps_body,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinstream.core.records import InRecord
from clinstream.features import accumulators
from clinstream.features.config import FeatureSettings
from clinstream.features.processor import FeatureProcessor

DST_EU = 1_774_746_000_000  # 2026-03-29T01:00:00Z: Europe/Berlin goes from +60 to +120 min
ZONES = (None, "Europe/Berlin", "America/New_York", "Asia/Kolkata")
OFFSETS = (0, 60, 120, -300, 330)
SETTINGS = FeatureSettings(horizon_minute_min=3, horizon_hour_min=30)


@st.composite
def uploads(draw: st.DrawFn) -> tuple[list[list[InRecord]], int]:
    """Batches of blocks of a few participants and devices: heart rate mostly (in runs, as devices upload), some RR
    and steps, re-sent blocks (sometimes with another zone), late blocks, implausible and unordered readings."""
    version = draw(st.sampled_from((1, 2)))
    t0 = draw(st.sampled_from((T0, DST_EU - 40 * MIN, T0 + 23 * 60 * MIN + 30 * MIN)))
    people = [pseudonym(f"coalesce-{i}") for i in range(draw(st.integers(1, 3)))]
    blocks = []
    sequences: dict[str, int] = {}
    for _ in range(draw(st.integers(1, 8))):  # upload runs
        who = draw(st.sampled_from(people))
        device = pseudonym(f"{who}/{draw(st.integers(0, 1))}")
        zone = draw(st.sampled_from(ZONES))
        offset = draw(st.sampled_from(OFFSETS))
        minute = draw(st.integers(0, 150))
        for k in range(draw(st.integers(1, 6))):
            seq = sequences.get(device, 0)
            sequences[device] = seq + 1
            start = t0 + (minute + k) * MIN + draw(st.sampled_from((0, 17_000)))
            kind = draw(st.sampled_from(("hr", "hr", "hr", "rr", "steps")))
            n = draw(st.integers(0, 70))
            if kind == "hr":
                offsets = [draw(st.integers(0, 119_000)) if draw(st.booleans()) and i % 7 == 0 else i * 1000
                           for i in range(n)]
                bpm = [draw(st.sampled_from((0.0, 55.5, 61.0, 72.4, 99.9, 180.0, 260.0))) for _ in range(n)]
                body, name = hr_body(offsets, bpm), "HeartRateSamples"
            elif kind == "rr":
                rr = [800 + 10 * (i % 5) for i in range(n)]
                acc = [sum(rr[: i + 1]) for i in range(n)]
                body, name = rr_body(acc, rr), "RRIntervalSamples"
            else:
                body, name = steps_body([i * 30_000 for i in range(n)], [i % 40 for i in range(n)], 30), \
                    "StepCountSamples"
            blocks.append(block(who, device, seq, start, name, body, offset, time_zone=zone))
    resent = draw(st.lists(st.integers(0, len(blocks) - 1), max_size=4))
    for i in resent:  # a re-sent block: same device and sequence, maybe another zone from the registration
        original = blocks[i].record
        blocks.append(block(original["participant_pseudonym"], original["device_pseudonym"], original["sequence"],
                            original["start"], original["measurement"][0].rsplit(".", 1)[1],
                            original["measurement"][1], original["utc_offset_minutes"],
                            time_zone=draw(st.sampled_from(ZONES))))
    order = draw(st.permutations(range(len(blocks)))) if draw(st.booleans()) else range(len(blocks))
    arrived = [blocks[i] for i in order]
    batches: list[list[InRecord]] = []
    i = 0
    while i < len(arrived):
        size = draw(st.integers(1, 12))
        part = arrived[i:i + size]
        records = in_records(part, partition=draw(st.integers(0, 1)))
        batches.append(records)
        i += size
    return batches, version


def _run(batches: list[list[InRecord]], version: int, coalesce: bool, fs: FeatureSettings = SETTINGS
         ) -> tuple[list[Any], dict[str, Any]]:
    state: dict[str, Any] = {}
    proc = FeatureProcessor("site-t", state, fs, version, coalesce_blocks=coalesce)
    outputs = []
    for batch in batches:
        result = proc.process(batch)
        outputs.append(([(o.topic, o.key, o.value) for o in result.out], dict(result.counters)))
    return outputs, state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(uploads())
def test_coalesced_fold_equals_block_by_block(case: tuple[list[list[InRecord]], int]) -> None:
    batches, version = case
    assert _run(batches, version, coalesce=True) == _run(batches, version, coalesce=False)


def test_a_run_of_uploads_is_folded_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten one-minute blocks of each of three participants in one batch (how devices upload), across local midnight
    for two of them, plus a re-sent block: equal records and state, and the fold really merged the blocks of each
    participant together (one merge per window, where block by block makes one per block and window)."""
    blocks = []
    for p in range(3):
        who, device = pseudonym(f"run-{p}"), pseudonym(f"run-dev-{p}")
        for m in range(10):
            start = T0 + 23 * 60 * MIN - 5 * MIN + m * MIN  # 22:55 to 23:05 UTC: midnight in Berlin
            blocks.append(block(who, device, m, start, "HeartRateSamples",
                                hr_body([i * 1000 for i in range(60)], [60.0 + p + (i % 9) for i in range(60)]),
                                0 if p == 0 else 60, time_zone="Europe/Lisbon" if p == 0 else "Europe/Berlin"))
    blocks.append(blocks[3])
    batches = [in_records(blocks)]
    merges: list[str] = []
    real_merge = accumulators.merge

    def counting(feature_set: str, acc: dict[str, Any], part: dict[str, Any]) -> None:
        merges.append(feature_set)
        real_merge(feature_set, acc, part)

    monkeypatch.setattr(accumulators, "merge", counting)
    for version in (1, 2):
        merges.clear()
        together = _run(batches, version, coalesce=True, fs=FeatureSettings())  # no window late or final
        merged_together = len(merges)
        merges.clear()
        assert together == _run(batches, version, coalesce=False, fs=FeatureSettings())
        assert len(merges) == 30 * 4  # every accepted block into its four windows
        # per participant: 10 minutes, 2 hours, 1 UTC day; local days: 1 in Lisbon, 2 in Berlin (two participants)
        assert merged_together == 30 + 3 * 2 + 3 + (1 + 2 + 2)


def test_blocks_of_one_participant_in_two_zones() -> None:
    """A participant's blocks alternating between two zones in one batch (a registration changed while uploads were
    queued), each block's UTC offset disagreeing with its zone: every local day is folded once, with its count of
    mismatching blocks."""
    who, device = pseudonym("two-zones"), pseudonym("two-zones-dev")
    blocks = [block(who, device, m, T0 + 12 * 60 * MIN + m * MIN, "HeartRateSamples",
                    hr_body([i * 1000 for i in range(60)], [70.0 + (i % 5) for i in range(60)]), 0,
                    time_zone=("Europe/Berlin", "America/New_York")[m % 2]) for m in range(10)]
    batches = [in_records(blocks)]
    together, state = _run(batches, 2, coalesce=True, fs=FeatureSettings())
    assert (together, state) == _run(batches, 2, coalesce=False, fs=FeatureSettings())
    local_days = [e["a"] for k, e in state.items() if k.startswith("w/") and "/LOCAL_DAY/" in k]
    assert sorted(a["om"] for a in local_days) == [5, 5]


def test_blocks_of_one_participant_with_two_offsets() -> None:
    """Version 1 dates local days by the block's UTC offset: two devices of one participant reporting the same minutes
    with different offsets fill two local days, each with its own wear minutes."""
    who = pseudonym("two-offsets")
    blocks = [block(who, pseudonym(f"two-offsets-dev-{d}"), m, T0 + 12 * 60 * MIN + m * MIN, "HeartRateSamples",
                    hr_body([i * 1000 for i in range(60)], [70.0 + (i % 5) for i in range(60)]), 60 * d)
              for m in range(5) for d in range(2)]
    batches = [in_records(blocks)]
    together, state = _run(batches, 1, coalesce=True, fs=FeatureSettings())
    assert (together, state) == _run(batches, 1, coalesce=False, fs=FeatureSettings())
    local_days = [e["a"] for k, e in state.items() if k.startswith("w/") and "/LOCAL_DAY/" in k]
    assert sorted(bin(int(a["w"], 16)).count("1") for a in local_days) == [5, 5]
