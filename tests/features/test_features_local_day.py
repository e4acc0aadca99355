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
from features_factories import HOUR, block, clock_block, decoded, hr_body, in_records, pseudonym, run, skin_body

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


def test_participants_of_several_zones_in_one_batch_get_the_local_days_they_get_alone() -> None:
    """Local-day starts are computed per zone over a whole batch: interleaving other zones' blocks changes no row."""
    offsets = (np.arange(PER_HOUR) * 20_000).tolist()
    per_participant: list[list[Any]] = []
    ours = {pseudonym(f"zone-{i}") for i in range(3)}
    last_midnight = 0
    for i, zone in enumerate(("Europe/Berlin", "America/New_York", "Asia/Kolkata")):
        midnight = _midnight(zone, "2026-03-29")
        last_midnight = max(last_midnight, midnight)
        per_participant.append([
            block(pseudonym(f"zone-{i}"), pseudonym(f"zone-device-{i}"), seq, midnight + (seq - 2) * HOUR,
                  "HeartRateSamples", hr_body(offsets, [60.0 + i] * PER_HOUR), time_zone=zone)
            for seq in range(6)])  # 2 hours before local midnight to 4 hours after: two local days

    def local_days(blocks: list[Any]) -> list[tuple[Any, ...]]:
        outs, _ = run(in_records([*blocks, clock_block(last_midnight + 24 * HOUR)]), version=2, batch=10_000)
        return sorted((r["participant_pseudonym"], r["window_start"], r["window_end"], r["values"]["count"])
                      for r, _ in decoded(outs) if r["is_final"] and r["window"] == "LOCAL_DAY"
                      and r["feature_set"] == "heart_rate" and r["participant_pseudonym"] in ours)

    interleaved = [b for group in zip(*per_participant, strict=True) for b in group]
    together = local_days(interleaved)
    alone = sorted(row for blocks in per_participant for row in local_days(blocks))
    assert together == alone
    assert len(together) == 6  # two local days of each participant
