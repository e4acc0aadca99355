"""Unit tests of the pure feature processor: windows, late data, duplicates, erasure, DLQ and state bounds."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from features_factories import (
    DAY,
    HOUR,
    MIN,
    T0,
    block,
    clock_block,
    decoded,
    erasure,
    finals,
    generate,
    hr_body,
    in_records,
    pseudonym,
    records_of,
    steps_body,
)
from features_factories import run as run_any_version
from hypothesis import given, settings
from hypothesis import strategies as st

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.records import InRecord
from clinstream.core.topics import ERASURE, PSEUDO_TELEMETRY
from clinstream.features import ranges
from clinstream.features.processor import FeatureProcessor

P1, D1 = pseudonym("P-000001"), pseudonym("DEV-1")
SITE = "site-t"


def run(*args: Any, **kwargs: Any) -> Any:
    """These tests pin feature version 1's definitions (kept selectable so old rows stay reproducible)."""
    return run_any_version(*args, version=1, **kwargs)


def _records(outs: Any, kind: str | None = None, fs: str = "heart_rate") -> list[dict[str, Any]]:
    return [r for r, _ in decoded(outs) if r["feature_set"] == fs and (kind is None or r["window"] == kind)]


def test_block_split_across_window_boundaries() -> None:
    # 90 samples, 1 per 2 s, starting 1 min before midnight UTC: spans 3 minutes, 2 hours and 2 days
    start = T0 + DAY - MIN
    b = block(P1, D1, 1, start, "HeartRateSamples", hr_body([i * 2000 for i in range(90)], [60 + i for i in range(90)]))
    outs, _ = run(in_records([b, clock_block(T0 + DAY)]))
    fin = {(r["window"], r["window_start"].timestamp() * 1000): r for r in _records(outs) if r["is_final"]
           and r["participant_pseudonym"] == P1}
    assert fin[("MINUTE", start)]["values"]["count"] == 30
    assert fin[("MINUTE", start + MIN)]["values"]["count"] == 30
    assert fin[("MINUTE", start + 2 * MIN)]["values"]["count"] == 30
    assert fin[("HOUR", T0 + DAY - HOUR)]["values"] == pytest.approx(
        {"mean": 74.5, "min": 60.0, "max": 89.0, "sd": pytest.approx(8.803408, abs=1e-6), "count": 30.0})
    assert fin[("DAY", T0)]["values"]["count"] == 30 and fin[("DAY", T0 + DAY)]["values"]["count"] == 60
    assert fin[("DAY", T0)]["completeness"] == 1 / 1440
    assert fin[("MINUTE", start)]["completeness"] == 1.0


@pytest.mark.parametrize("offset_min", [0, 330, -300, 840])
def test_local_day_windows_follow_the_participants_offset(offset_min: int) -> None:
    local_midnight_utc = T0 + DAY - offset_min * MIN  # 00:00 local time on 2026-01-02
    before = block(P1, D1, 1, local_midnight_utc - 10_000, "HeartRateSamples", hr_body([0, 5000], [50, 52]),
                   offset_min)
    after = block(P1, D1, 2, local_midnight_utc, "HeartRateSamples", hr_body([0, 5000], [70, 72]), offset_min)
    outs, _ = run(in_records([before, after, clock_block(T0 + 2 * DAY)]))
    local = {r["window_start"].timestamp() * 1000: r for r in _records(outs, "LOCAL_DAY") if r["is_final"]
             and r["participant_pseudonym"] == P1}
    assert set(local) == {local_midnight_utc - DAY, local_midnight_utc}
    assert local[local_midnight_utc]["values"]["mean"] == 71.0
    assert local[local_midnight_utc - DAY]["values"]["mean"] == 51.0
    assert all(r["utc_offset_minutes"] == offset_min for r in local.values())
    assert all(r["window_end"].timestamp() * 1000 - r["window_start"].timestamp() * 1000 == DAY
               for r in local.values())


def test_revisions_grow_and_final_keeps_the_revision() -> None:
    blocks = [block(P1, D1, i, T0 + i * 10_000, "HeartRateSamples", hr_body([0], [60 + i])) for i in range(4)]
    outs, state = run(in_records(blocks), batch=1)
    minute = [r for r in _records(outs, "MINUTE")]
    assert [r["revision"] for r in minute] == [1, 2, 3, 4]
    assert not any(r["is_final"] for r in minute)
    later, _ = run(in_records([clock_block(T0)]), state=state)
    final = [r for r in _records(later, "MINUTE") if r["participant_pseudonym"] == P1]
    assert len(final) == 1 and final[0]["is_final"] and final[0]["revision"] == 4
    assert not any(k.startswith(f"w/0/{P1}") for k in state)  # final windows are deleted


def test_completeness_change_raises_the_revision_of_other_sets() -> None:
    steps = block(P1, D1, 1, T0, "StepCountSamples", steps_body([0], [80]))
    hr = block(P1, D1, 2, T0, "HeartRateSamples", hr_body([1000], [60]))
    outs, _ = run(in_records([steps, hr]), batch=1)
    minute_steps = _records(outs, "MINUTE", "steps")
    assert [(r["revision"], r["completeness"]) for r in minute_steps] == [(1, 0.0), (2, 1.0)]


def test_completeness_change_reaches_other_sets_after_a_restart() -> None:
    """A new processor over the same state (its indexes rebuilt from the keys) still re-emits the other sets' rows."""
    steps = block(P1, D1, 1, T0, "StepCountSamples", steps_body([0], [80]))
    hr = block(P1, D1, 2, T0, "HeartRateSamples", hr_body([1000], [60]))
    recs = in_records([steps, hr])
    _, state = run(recs[:1])
    outs, _ = run(recs[1:], state=state)
    assert [(r["revision"], r["completeness"]) for r in _records(outs, "MINUTE", "steps")] == [(2, 1.0)]


def test_duplicate_block_changes_nothing_and_re_emits_identical_bytes() -> None:
    b = block(P1, D1, 7, T0, "HeartRateSamples", hr_body([0, 1000], [60, 61]))
    recs = in_records([b, b])
    state: dict[str, Any] = {}
    proc = FeatureProcessor(SITE, state, version=1)
    first = proc.process(recs[:1])
    snapshot = repr(state)
    second = proc.process(recs[1:])
    assert repr(state) == snapshot
    assert [o.value for o in second.out] == [o.value for o in first.out]
    assert second.counters["duplicate_blocks"] == 1


def test_block_beyond_the_horizon_goes_to_the_late_topic_with_its_bytes() -> None:
    on_time = block(P1, D1, 1, T0 + 3 * DAY, "HeartRateSamples", hr_body([0], [60]))
    too_late = block(P1, D1, 2, T0, "HeartRateSamples", hr_body([0], [60]))  # all windows past their horizon
    partly = block(P1, D1, 3, T0 + 3 * DAY - 7 * HOUR, "HeartRateSamples", hr_body([0], [60]))  # minute/hour late
    recs = in_records([on_time, too_late, partly])
    outs, _ = run(recs)
    late = [o for o in outs if o.topic == f"{SITE}.pseudo.late-telemetry.v1"]
    assert [(o.key, o.value) for o in late] == [(recs[1].key, too_late.value)]
    partly_windows = {r["window"] for r in decoded(outs) for r in [r[0]]
                      if r["window_start"].timestamp() * 1000 <= T0 + 3 * DAY - 7 * HOUR < r["window_end"].timestamp()
                      * 1000}
    assert partly_windows == {"DAY", "LOCAL_DAY"}


def test_day_windows_accept_data_a_day_late() -> None:
    early = block(P1, D1, 1, T0 + 10 * HOUR, "HeartRateSamples", hr_body([0], [60]))
    much_later = block(P1, D1, 2, T0 + 2 * DAY + 10 * HOUR, "HeartRateSamples", hr_body([0], [60]))
    late_sync = block(P1, D1, 3, T0 + 11 * HOUR, "HeartRateSamples", hr_body([0], [80]))  # 47 h late
    outs, _ = run(in_records([early, much_later, late_sync, clock_block(T0 + 3 * DAY)]), batch=1)
    day = [r for r in _records(outs, "DAY") if r["is_final"] and r["window_start"].timestamp() * 1000 == T0]
    assert day[0]["values"]["mean"] == 70.0 and day[0]["revision"] == 2


def test_dedup_ranges_stay_compact() -> None:
    blocks = [block(P1, D1, i, T0 + i * 60_000, "HeartRateSamples", hr_body([0], [60])) for i in range(240)]
    _, state = run(in_records(blocks), batch=50)
    day = state[f"w/0/{P1}/heart_rate/DAY/{T0}"]
    assert day["d"] == {D1: [[0, 239]]}
    assert day["r"] == 240


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=80))
def test_ranges_match_a_set(values: list[int]) -> None:
    r: ranges.Ranges = []
    seen: set[int] = set()
    for v in values:
        assert ranges.add(r, v) == (v not in seen)
        seen.add(v)
    assert all(ranges.contains(r, v) == (v in seen) for v in range(-2, 203))
    assert ranges.count(r) == len(seen)
    assert all(a <= b and b + 1 < c for (a, b), (c, _) in itertools.pairwise(r))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=30), st.lists(st.integers(1, 4), max_size=30))
def test_a_devices_next_blocks_extend_the_ranges_as_adding_each(values: list[int], steps: list[int]) -> None:
    """`extend_above` (a run of sequences above all recorded, strictly increasing) equals `add` of each in turn."""
    one_by_one: ranges.Ranges = []
    for v in values:
        ranges.add(one_by_one, v)
    run = list(itertools.accumulate(steps, initial=max(values, default=-1) + steps[0])) if steps else []
    extended = [list(r) for r in one_by_one]
    ranges.extend_above(extended, run)
    for v in run:
        ranges.add(one_by_one, v)
    assert extended == one_by_one


def test_erasure_purges_state_and_drops_later_records() -> None:
    p2 = pseudonym("P-000002")
    blocks = [block(P1, D1, 1, T0, "HeartRateSamples", hr_body([0], [60])),
              block(p2, pseudonym("DEV-2"), 1, T0, "HeartRateSamples", hr_body([0], [70]))]
    _, state = run(in_records(blocks))
    assert any(P1 in k for k in state)
    erase = records_of([(ERASURE.name(SITE), P1, erasure(P1))])
    again = in_records([block(P1, D1, 2, T0 + MIN, "HeartRateSamples", hr_body([0], [60]))])
    outs, state = run([*erase, *again], state=state)
    assert not any(P1 in k for k in state if not k.startswith("x/"))
    assert any(p2 in k for k in state)
    assert not [o for o in outs if o.key == subject_key(SITE, P1) and "wearable" in o.topic]


def _dlq(outs: Any) -> list[dict[str, Any]]:
    return [get_codec().decode(o.value) for o in outs if o.topic.endswith("dlq-features.v1")]


def test_bad_records_go_to_the_dlq_with_original_bytes() -> None:
    good = block(P1, D1, 1, T0, "HeartRateSamples", hr_body([0], [60]))
    mismatched = block(P1, D1, 2, T0, "HeartRateSamples", {"offsets_ms": [0, 1], "bpm": [60.0]})
    future = block(P1, D1, 3, T0, "HeartRateSamples", hr_body([0, 2 * HOUR], [60, 61]), received_ms=T0 + MIN)
    unordered_rr = block(P1, D1, 4, T0, "RRIntervalSamples", {"offsets_ms": [900, 800], "rr_ms": [900.0, 800.0]})
    negative = block(P1, D1, 5, T0, "HeartRateSamples", hr_body([0, -1000, 500], [60, 61, 62]))
    future_first = block(P1, D1, 6, T0, "HeartRateSamples", hr_body([2 * HOUR, 0], [60, 61]), received_ms=T0 + MIN)
    topic = PSEUDO_TELEMETRY.name(SITE)
    garbage = InRecord(topic, 0, 9, b"k", b"\x00not avro", 123)
    recs = [*in_records([good, mismatched, future, unordered_rr, negative, future_first]), garbage]
    outs, _ = run(recs)
    dead = _dlq(outs)
    assert [d["reason"] for d in dead] == ["array lengths differ", "event time after receipt (device clock)",
                                         "RR offsets not in beat order", "negative sample offset",
                                         "event time after receipt (device clock)",
                                         "not Avro single-object encoded (bad magic)"]
    assert [d["original_value"] for d in dead] == [mismatched.value, future.value, unordered_rr.value, negative.value,
                                                   future_first.value, b"\x00not avro"]
    assert all(P1 not in d["reason"] for d in dead)
    assert dead[-1]["failed_at"].timestamp() * 1000 == 123  # deterministic: the input's timestamp
    assert len(finals(outs)) == 0 and _records(outs)  # the good block still counted


def test_implausible_readings_are_left_out() -> None:
    b = block(P1, D1, 1, T0, "HeartRateSamples", hr_body([0, 1000, 2000, 3000], [0.0, 60.0, float("nan"), 300.0]))
    outs, _ = run(in_records([b]))
    assert _records(outs, "MINUTE")[0]["values"]["count"] == 1


@pytest.mark.parametrize("version", [1, 2])
def test_every_heart_rate_window_counts_each_reading_once_in_its_histogram_and_epochs(version: int) -> None:
    """Folded over many batches, a window's 1-bpm histogram (and, in version 2, its 5-minute epochs) hold exactly its
    n readings: no two windows' accumulators share a histogram, however their partials were computed."""
    data = generate(n_participants=3, hours=12, seed=13)
    _, state = run_any_version(in_records(data.blocks), batch=50, version=version)
    checked = 0
    for key, entry in state.items():
        if key.startswith("w/") and "/heart_rate/" in key and ("/DAY/" in key or "/LOCAL_DAY/" in key):
            acc = entry["a"]
            assert sum(acc["h"].values()) == acc["n"], key
            if version == 2:
                assert sum(acc["e5n"].values()) == acc["n"], key
            checked += 1
    assert checked >= 6
