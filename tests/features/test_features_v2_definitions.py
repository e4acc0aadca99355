"""Version 2 definitions on hand-built blocks (sleep revisions and overlaps, spread steps and cadence, time-weighted
SpO2, resting heart rate with its wear rule), and order/duplicate independence of every changed feature (hypothesis).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from features_factories import (
    DAY,
    HOUR,
    MIN,
    T0,
    block,
    clock_block,
    decoded,
    finals,
    hr_body,
    in_records,
    pseudonym,
    rr_body,
    run,
    skin_body,
    sleep_body,
    spo2_body,
    steps_body,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

P = pseudonym("v2-defs")
DEV = pseudonym("v2-defs-device")
DEV2 = pseudonym("v2-defs-device-2")
ZONE = "Europe/Berlin"


def _settings(**kw: Any) -> Any:
    from clinstream.features.config import FeatureSettings

    return FeatureSettings(**kw)


def _rows(blocks: list[Any], fs: str, kind: str) -> list[dict[str, Any]]:
    outs, _ = run(in_records([*blocks, clock_block(T0 + 3 * DAY)]), version=2)
    return [r for r, _ in decoded(outs) if r["is_final"] and r["feature_set"] == fs and r["window"] == kind
            and r["participant_pseudonym"] == P]


def _b(device: str, seq: int, start: int, measurement: str, body: dict[str, Any], **kw: Any) -> Any:
    return block(P, device, seq, start, measurement, body, offset_min=60, time_zone=ZONE, **kw)


def test_a_revised_sleep_episode_replaces_the_earlier_one() -> None:
    night = T0 - HOUR  # 2026-01-01 00:00 Berlin is 2025-12-31 23:00 UTC; episodes from 23:00 local the day before
    first = _b(DEV, 1, night - HOUR, "SleepEpisodes", sleep_body([(0, 8 * HOUR, 420.0)]),
               received_ms=night + 8 * HOUR)  # 23:00-07:00 local
    revised = _b(DEV, 2, night - HOUR, "SleepEpisodes", sleep_body([(10 * MIN, 8 * HOUR + 5 * MIN, 430.0)]),
                 received_ms=night + 9 * HOUR)  # 23:10-07:05 local
    for order in ([first, revised], [revised, first]):
        rows = _rows(order, "sleep", "LOCAL_DAY")
        assert len(rows) == 1
        values = rows[0]["values"]
        assert values["episodes"] == 1.0
        assert values["time_in_bed_min"] == 475.0
        assert values["total_sleep_time_min"] == 430.0


def test_overlapping_episodes_of_two_devices_merge_to_their_union() -> None:
    night = T0 - HOUR
    a = _b(DEV, 1, night - HOUR, "SleepEpisodes", sleep_body([(0, 8 * HOUR, 420.0)]), received_ms=night + 9 * HOUR)
    b = _b(DEV2, 1, night - HOUR, "SleepEpisodes", sleep_body([(HOUR, 9 * HOUR, 400.0)]),
           received_ms=night + 9 * HOUR)
    values = _rows([a, b], "sleep", "LOCAL_DAY")[0]["values"]
    assert values["time_in_bed_min"] == 540.0  # union 23:00-08:00, not 960
    assert values["total_sleep_time_min"] == 420.0
    assert values["episodes"] == 1.0


def test_steps_are_spread_over_their_interval_and_active_minutes_use_100_per_minute() -> None:
    t0 = T0 + 10 * HOUR
    slow = _b(DEV, 1, t0, "StepCountSamples", steps_body([0], [600], duration_s=600))  # 60/min for 10 min
    brisk = _b(DEV, 2, t0 + HOUR, "StepCountSamples", steps_body([0], [1100], duration_s=600))  # 110/min
    minutes = {int(r["window_start"].timestamp() * 1000): r["values"] for r in
               _rows([slow, brisk], "steps", "MINUTE")}
    assert [minutes[t0 + k * MIN]["total"] for k in range(10)] == [60.0] * 10
    assert all(minutes[t0 + HOUR + k * MIN]["active_minutes"] == 1.0 for k in range(10))
    hours = {int(r["window_start"].timestamp() * 1000): r["values"] for r in _rows([slow, brisk], "steps", "HOUR")}
    assert hours[t0] == {"total": 600.0, "active_minutes": 0.0, "quality_ok": 0.0}
    assert hours[t0 + HOUR]["active_minutes"] == 10.0 and hours[t0 + HOUR]["total"] == 1100.0


def test_time_below_90_is_weighted_by_time_and_named_for_the_threshold() -> None:
    t0 = T0 + 10 * HOUR
    values = [95.0] * 60
    values[30] = 85.0  # one reading of a 1-Hz minute below 90 %
    rows = _rows([_b(DEV, 1, t0, "OxygenSaturationSamples", spo2_body((np.arange(60) * 1000).tolist(), values))],
                 "spo2", "MINUTE")
    v = rows[0]["values"]
    assert v["time_below_90_min"] == 1 / 60  # one second, not a whole minute
    assert v["time_observed_min"] == 1.0
    assert abs(v["share_below_90_percent"] - 100 / 60) < 1e-12
    outs, _ = run(in_records([_b(DEV, 1, t0, "OxygenSaturationSamples",
                                 spo2_body((np.arange(60) * 1000).tolist(), values)), clock_block(T0 + DAY)]),
                  version=2, settings=_settings(spo2_low_percent=88.0))
    names = {n for r, _ in decoded(outs) if r["feature_set"] == "spo2" for n in r["values"]}
    assert "time_below_88_min" in names and "time_below_90_min" not in names


def _hr_day(hours: int) -> list[Any]:
    out = []
    offsets = (np.arange(60) * 1000).tolist()
    for m in range(hours * 60):
        t0 = T0 - HOUR + m * MIN  # from local midnight (Berlin)
        bpm = [50.0 + (m % 90) * 0.5] * 60  # exact in Avro float
        out.append(_b(DEV, m, t0, "HeartRateSamples", hr_body(offsets, bpm)))
    return out


def test_resting_heart_rate_is_the_lowest_worn_5_minute_mean_and_withheld_below_10_hours_of_wear() -> None:
    nine = _rows(_hr_day(9), "heart_rate", "LOCAL_DAY")[0]["values"]
    assert "resting" not in nine and nine["quality_ok"] == 0.0
    ten = _rows(_hr_day(10), "heart_rate", "LOCAL_DAY")[0]["values"]
    assert ten["quality_ok"] == 1.0
    assert ten["resting"] == 51.0  # minutes 0-4 of each 90-minute cycle: 50, 50.5, 51, 51.5, 52


# --- order and duplicate independence (hypothesis) --------------------------------------------------------------
def _mixed_blocks() -> list[Any]:
    rng = np.random.default_rng(8)
    t0 = T0 + 20 * HOUR  # crosses UTC and Berlin midnights
    out: list[Any] = []
    seq = 0
    beats = t0 + np.cumsum(rng.integers(600, 1100, 900))
    rr = np.diff(np.concatenate(([t0], beats)))
    rr[[100, 400, 700]] = rr[[100, 400, 700]] * 2  # missed beats
    for i in range(0, 900, 60):
        begin = t0 if i == 0 else int(beats[i - 1])
        out.append(_b(DEV, seq, begin, "RRIntervalSamples", rr_body((beats[i:i + 60] - begin).tolist(),
                                                                     rr[i:i + 60].tolist())))
        seq += 1
    for h in range(6):
        start = t0 + h * HOUR
        offs = (np.arange(0, 3600, 10) * 1000).tolist()
        out.append(_b(DEV, seq, start, "HeartRateSamples", hr_body(offs, (60 + rng.normal(0, 5, 360)).round(1))))
        out.append(_b(DEV, seq + 1, start, "StepCountSamples",
                      steps_body((np.arange(0, 3600, 300) * 1000).tolist(), rng.integers(0, 900, 12).tolist(), 300)))
        out.append(_b(DEV, seq + 2, start, "OxygenSaturationSamples",
                      spo2_body(offs, np.clip(rng.normal(92, 3, 360), 70, 100).round(1))))
        out.append(_b(DEV, seq + 3, start, "SkinTemperatureSamples", skin_body(offs[::6], [33.1] * 60)))
        seq += 4
    out.append(_b(DEV, seq, t0 - 6 * HOUR, "SleepEpisodes", sleep_body([(0, 7 * HOUR, 400.0)])))
    out.append(_b(DEV, seq + 1, t0 - 6 * HOUR, "SleepEpisodes", sleep_body([(30 * MIN, 7 * HOUR + 30 * MIN, 390.0)])))
    out.append(_b(DEV2, 0, t0 - 5 * HOUR, "SleepEpisodes", sleep_body([(0, 5 * HOUR, 280.0)])))
    return out


_BLOCKS = _mixed_blocks()
_CLOCK = clock_block(max(b.record["received_at"] for b in _BLOCKS))
_NO_LATE_DATA = _settings(horizon_minute_min=2 * 24 * 60, horizon_hour_min=2 * 24 * 60)  # any order is in time
_WANT = finals(run(in_records([*_BLOCKS, _CLOCK]), version=2, settings=_NO_LATE_DATA)[0])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.permutations(range(len(_BLOCKS))), again=st.lists(st.integers(0, len(_BLOCKS) - 1), max_size=20),
       batch=st.integers(1, 40))
def test_v2_finals_do_not_depend_on_order_duplicates_or_batching(order: list[int], again: list[int],
                                                                 batch: int) -> None:
    arrivals = [_BLOCKS[i] for i in order] + [_BLOCKS[i] for i in again]
    got = finals(run(in_records([*arrivals, _CLOCK]), batch=batch, version=2, settings=_NO_LATE_DATA)[0])
    assert got == _WANT


def test_the_mixed_data_exercise_every_changed_feature() -> None:
    sets = {(k[1], k[2]) for k in _WANT}
    assert {("hrv", "HOUR"), ("hrv", "LOCAL_DAY"), ("steps", "MINUTE"), ("spo2", "HOUR"), ("sleep", "LOCAL_DAY"),
            ("heart_rate", "LOCAL_DAY"), ("skin_temperature", "LOCAL_DAY")} <= sets
