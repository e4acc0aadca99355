"""Version 2 LOCAL_DAY windows in the participant's IANA zone: one row per local date, 23 h / 24 h / 25 h long.

A participant wears the device all day (hourly blocks of heart rate every 20 s and skin temperature every 60 s); the
device keeps sending the offset of the day's start, so blocks after a change disagree with the zone and are counted,
not re-dated. The site default zone (UTC) applies to blocks without one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from features_factories import (
    HOUR,
    block,
    clock_block,
    decoded,
    hr_body,
    in_records,
    pseudonym,
    run,
    skin_body,
    steps_body,
)

from clinstream.features.state import baseline_key

P = pseudonym("local-day")
DEVICE = pseudonym("local-day-device")
PER_HOUR = 180  # one reading every 20 s


def _midnight(zone: str, day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def _day_blocks(zone: str, day: str, device_offset_min: int, send_zone: bool = True) -> tuple[list[Any], int, int]:
    start = _midnight(zone, day)
    end = _midnight(zone, str(datetime.fromisoformat(day).date().fromordinal(
        datetime.fromisoformat(day).toordinal() + 1)))
    blocks = []
    offsets = (np.arange(PER_HOUR) * 20_000).tolist()
    for seq, t0 in enumerate(range(start, end, HOUR)):
        blocks.append(block(P, DEVICE, 2 * seq, t0, "HeartRateSamples", hr_body(offsets, [60.0] * PER_HOUR),
                            offset_min=device_offset_min, time_zone=zone if send_zone else None))
        blocks.append(block(P, DEVICE, 2 * seq + 1, t0, "SkinTemperatureSamples",
                            skin_body(offsets[::3], [33.0] * (PER_HOUR // 3)), offset_min=device_offset_min,
                            time_zone=zone if send_zone else None))
    return blocks, start, end


CASES = [  # zone, local date, offset the device keeps sending, hours, blocks whose offset disagrees with the zone
    ("Europe/Berlin", "2026-03-29", 60, 23, 21),  # CET until 02:00 local (01:00 UTC), CEST (+120) after
    ("Europe/Berlin", "2026-10-25", 120, 25, 22),  # CEST until 03:00 local (01:00 UTC), CET (+60) after
    ("Asia/Kolkata", "2026-03-29", 330, 24, 0),  # no daylight saving
]


@pytest.mark.parametrize(("zone", "day", "device_offset", "hours", "mismatched"), CASES)
def test_one_local_day_row_with_its_true_length_and_full_completeness(zone: str, day: str, device_offset: int,
                                                                       hours: int, mismatched: int) -> None:
    blocks, start, end = _day_blocks(zone, day, device_offset)
    assert end - start == hours * HOUR
    outs, state = run(in_records([*blocks, clock_block(end)]), version=2)
    rows = [r for r, _ in decoded(outs) if r["is_final"] and r["window"] == "LOCAL_DAY"
            and r["participant_pseudonym"] == P]
    hr = [r for r in rows if r["feature_set"] == "heart_rate"]
    assert len(hr) == 1, [(r["window_start"], r["window_end"]) for r in hr]
    row = hr[0]
    assert int(row["window_start"].timestamp() * 1000) == start
    assert int(row["window_end"].timestamp() * 1000) == end
    assert row["values"]["count"] == hours * PER_HOUR
    assert row["completeness"] == 1.0
    assert row["values"]["quality_ok"] == 1.0
    assert row["values"]["offset_mismatch_blocks"] == mismatched
    offset_at_start = ZoneInfo(zone).utcoffset(datetime.fromtimestamp(start / 1000))
    assert offset_at_start is not None
    assert row["utc_offset_minutes"] == int(offset_at_start.total_seconds() // 60)
    skin = [r for r in rows if r["feature_set"] == "skin_temperature"]
    assert len(skin) == 1 and skin[0]["completeness"] == 1.0
    baseline = next(v for k, v in state.items() if k == baseline_key(0, P))
    local_date = datetime.fromisoformat(day).date()
    epoch_day = local_date.toordinal() - datetime(1970, 1, 1).toordinal()
    assert baseline["days"] == {str(epoch_day): [int(33.0 * 10_000) * hours * PER_HOUR // 3, hours * PER_HOUR // 3]}


def test_a_block_without_a_zone_takes_the_site_default() -> None:
    blocks, start, end = _day_blocks("UTC", "2026-03-29", 0, send_zone=False)
    outs, _ = run(in_records([*blocks, clock_block(end)]), version=2)
    hr = [r for r, _ in decoded(outs) if r["is_final"] and r["window"] == "LOCAL_DAY"
          and r["feature_set"] == "heart_rate" and r["participant_pseudonym"] == P]
    assert [(int(r["window_start"].timestamp() * 1000), r["completeness"]) for r in hr] == [(start, 1.0)]
    assert end - start == 24 * HOUR


def _local_day_rows(blocks: list[Any], feature_set: str, after_ms: int) -> list[tuple[Any, ...]]:
    """(participant, start, end, values) of the final LOCAL_DAY rows of one feature set, one batch for all blocks."""
    outs, _ = run(in_records([*blocks, clock_block(after_ms)]), version=2, batch=10_000)
    ours = {b.participant for b in blocks}
    return sorted((r["participant_pseudonym"], r["window_start"], r["window_end"], sorted(r["values"].items()))
                  for r, _ in decoded(outs) if r["is_final"] and r["window"] == "LOCAL_DAY"
                  and r["feature_set"] == feature_set and r["participant_pseudonym"] in ours)


def _straddling(i: int, zone: str, measurement: str, local_day: str) -> list[Any]:
    """Six hourly blocks from 2.5 h before a local midnight: one straddles it."""
    midnight = _midnight(zone, local_day)
    body = (hr_body((np.arange(PER_HOUR) * 20_000).tolist(), [60.0 + i] * PER_HOUR)
            if measurement == "HeartRateSamples" else steps_body([m * 60_000 for m in range(60)], [10 + i] * 60))
    return [block(pseudonym(f"zone-{i}"), pseudonym(f"zone-device-{i}"), seq, midnight + (2 * seq - 5) * HOUR // 2,
                  measurement, body, time_zone=zone) for seq in range(6)]


@pytest.mark.parametrize(("measurement", "feature_set"), [("HeartRateSamples", "heart_rate"),
                                                          ("StepCountSamples", "steps")])
def test_participants_of_several_zones_in_one_batch_get_the_local_days_they_get_alone(measurement: str,
                                                                                       feature_set: str) -> None:
    """Local-day starts are computed per zone over a whole batch: interleaving other zones' blocks changes no row."""
    zones = ("Europe/Berlin", "America/New_York", "Asia/Kolkata")
    per_participant = [_straddling(i, zone, measurement, "2026-03-29") for i, zone in enumerate(zones)]
    after = max(_midnight(zone, "2026-03-30") for zone in zones) + 24 * HOUR
    interleaved = [b for group in zip(*per_participant, strict=True) for b in group]
    together = _local_day_rows(interleaved, feature_set, after)
    alone = sorted(row for blocks in per_participant for row in _local_day_rows(blocks, feature_set, after))
    assert together == alone
    assert len(together) == 6  # two local days of each participant


def test_a_batch_spanning_more_than_a_year_gets_each_blocks_local_days() -> None:
    """Instants more than 400 days apart take the per-block path; a block straddling local midnight still splits."""
    zone = "Europe/Berlin"
    early = _straddling(0, zone, "HeartRateSamples", "2026-03-29")
    late = [block(b.participant, pseudonym("zone-device-0"), 100 + j,
                  _midnight(zone, "2027-06-01") + (2 * j - 5) * HOUR // 2, "HeartRateSamples",
                  hr_body((np.arange(PER_HOUR) * 20_000).tolist(), [70.0] * PER_HOUR), time_zone=zone)
            for j, b in enumerate(early)]
    rows = _local_day_rows([*early, *late], "heart_rate", _midnight(zone, "2027-06-02") + 24 * HOUR)
    counts = {start: dict(values)["count"] for _, start, _, values in rows}
    # 2.5 h before midnight and 3.5 h after it, 180 readings an hour, on each of the two dates
    assert sorted(counts.values()) == [2.5 * PER_HOUR, 2.5 * PER_HOUR, 3.5 * PER_HOUR, 3.5 * PER_HOUR]
