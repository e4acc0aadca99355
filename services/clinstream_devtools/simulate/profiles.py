"""The physiology model of synthetic participants: baselines, habits, an inflammatory-flare schedule, responses.

Every participant is a deterministic function of (seed, index). The device and LIMS simulators and the federated
fills share this one model, so a flare shows in every source: resting heart rate and skin temperature rise, HRV,
SpO2, activity and sleep fall, and samples taken during a flare have raised CRP (`Participant.crp_mg_l`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clinstream.core.timeutil import DAY_MS, HOUR_MS

# Day-to-day variability unrelated to flares (ambient temperature, stress, alcohol, training...), per local day,
# at day_variability = 1: SDs of resting-HR offset (beats/min), ln RMSSD, wrist skin temperature (degC), SpO2 (%).
DAY_SD_HR = 2.0
DAY_SD_LN_RMSSD = 0.15
DAY_SD_SKIN_C = 0.3
DAY_SD_SPO2 = 0.3
# Flares: gaps between flares ~ exponential, durations uniform; ramps make the level smooth.
FLARE_MEAN_GAP_DAYS = 9.0
FLARE_MIN_DAYS = 3.0
FLARE_MAX_DAYS = 7.0
FLARE_RAMP_MS = 18 * HOUR_MS
FLARE_HORIZON_DAYS = 400  # flares are scheduled from this long before the epoch...
FLARE_FUTURE_DAYS = 3650  # ...until this long after it (windows relative to "now" keep their flares for years)
FLARE_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: a fixed origin, so schedules do not depend on "now"
# The response to a flare at level 1 (times the person's flare_gains where one applies).
FLARE_HR_BPM = 9.0  # heart rate rises by this many beats/min (gain 0)
FLARE_RMSSD_DROP = 0.5  # RMSSD loses this fraction (gain 1)
FLARE_SKIN_C = 0.6  # wrist skin temperature rises by this many degC (gain 2)
FLARE_SPO2_DROP = 0.6  # SpO2 falls by this many percentage points
FLARE_ACTIVITY_DROP = 0.4  # walking bouts fall by this fraction (gain 3)
FLARE_SLEEP_H = 0.3  # time in bed shortens by this many hours (gain 3)
FLARE_CRP_MG_L = (12.0, 70.0)  # CRP rises by a uniform draw from this range over the person's baseline
CRP_MAX_MG_L = 400.0


def rng_for(seed: int, *parts: int) -> np.random.Generator:
    """A generator that depends only on the seed and the given integers."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *parts]))


@dataclass(frozen=True)
class Participant:
    """One synthetic person wearing one device."""

    index: int
    participant_id: str
    device_id: str
    resting_hr: float  # beats/min at rest, awake
    rmssd_ms: float  # short-term RMSSD at rest, awake, outside flares
    skin_temp_c: float  # wrist skin temperature, awake, at rest
    spo2_percent: float
    sleep_start_h: float  # local clock hour of lights out (may exceed 24)
    sleep_hours: float
    activity: float  # relative amount of walking
    utc_offset_minutes: int
    crp_baseline_mg_l: float
    birth_year: int
    flares: tuple[tuple[int, int], ...]  # (start_ms, end_ms) of each flare
    day_variability: float = 0.0  # scale of day-to-day physiological variability (0: every day alike but flares)
    # How strongly this person's heart rate, HRV, skin temperature, and activity + sleep respond to a flare
    # (1: the typical response; people differ, see make_participant's flare_response).
    flare_gains: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def flare_level(self, t_ms: Any) -> Any:
        """Flare intensity 0..1 at epoch-ms instants (scalar or numpy array)."""
        t = np.asarray(t_ms, dtype=np.float64)
        level = np.zeros_like(t)
        if t.size == 0:
            return level
        lo, hi = float(t.min()), float(t.max())
        for start, end in self.flares:
            if end < lo or start > hi:
                continue
            rise = np.clip((t - start) / FLARE_RAMP_MS, 0.0, 1.0)
            fall = np.clip((end - t) / FLARE_RAMP_MS, 0.0, 1.0)
            level = np.maximum(level, np.minimum(rise, fall))
        return level if level.ndim else float(level)

    def day_offsets(self, seed: int, local_day: int) -> tuple[float, float, float, float]:
        """(HR offset, ln RMSSD offset, skin temperature offset, SpO2 offset) of a local day (days since 1970)."""
        if self.day_variability <= 0:
            return 0.0, 0.0, 0.0, 0.0
        z = rng_for(seed, 8, self.index, local_day).normal(0.0, self.day_variability, 4)
        return (float(z[0]) * DAY_SD_HR, float(z[1]) * DAY_SD_LN_RMSSD, float(z[2]) * DAY_SD_SKIN_C,
                float(z[3]) * DAY_SD_SPO2)

    def crp_mg_l(self, at_ms: int, rng: np.random.Generator) -> float:
        """The CRP (mg/L, one decimal) of a blood sample drawn at `at_ms`: baseline noise plus the flare's rise."""
        level = float(self.flare_level(at_ms))
        baseline = self.crp_baseline_mg_l * float(rng.lognormal(0, 0.25))
        return round(min(baseline + level * float(rng.uniform(*FLARE_CRP_MG_L)), CRP_MAX_MG_L), 1)

    def in_flare(self, t_ms: int, threshold: float = 0.5) -> bool:
        """Whether the flare level at an instant is at least `threshold`."""
        return float(self.flare_level(t_ms)) >= threshold


def _flare_schedule(rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
    flares: list[tuple[int, int]] = []
    t = FLARE_EPOCH_MS - FLARE_HORIZON_DAYS * DAY_MS + rng.uniform(0, FLARE_MEAN_GAP_DAYS) * DAY_MS
    end_of_horizon = FLARE_EPOCH_MS + FLARE_FUTURE_DAYS * DAY_MS
    while t < end_of_horizon:
        duration = rng.uniform(FLARE_MIN_DAYS, FLARE_MAX_DAYS) * DAY_MS
        flares.append((int(t), int(t + duration)))
        t += duration + rng.exponential(FLARE_MEAN_GAP_DAYS) * DAY_MS + 2 * DAY_MS
    return tuple(flares)


def participant_id(index: int, prefix: str = "P") -> str:
    """Synthetic participant id, e.g. P-000007."""
    return f"{prefix}-{index:06d}"


def _flare_gains(seed: int, index: int, spread: float) -> tuple[float, float, float, float]:
    """Per-person response multipliers: log-normal with mean 1, capped so that HRV never drops to nothing."""
    if spread <= 0:
        return 1.0, 1.0, 1.0, 1.0
    g = np.exp(rng_for(seed, 9, index).normal(-spread**2 / 2, spread, 4))
    g = np.clip(g, 0.1, (2.5, 1.8, 2.5, 2.0))
    return float(g[0]), float(g[1]), float(g[2]), float(g[3])


def make_participant(seed: int, index: int, *, prefix: str = "P", day_variability: float = 0.0,
                     flare_response: float = 0.0) -> Participant:
    """The participant `index` of a seeded cohort.

    `day_variability` scales day-to-day variability and `flare_response` is the between-person spread (SD of the
    log gain) of the flare response; both 0 by default, and neither changes the other draws.
    """
    rng = rng_for(seed, 1, index)
    return Participant(
        index=index,
        participant_id=participant_id(index, prefix),
        device_id=f"SIM-{prefix}-{seed % 100_000:05d}-{index:06d}",
        resting_hr=float(rng.uniform(54, 72)),
        rmssd_ms=float(rng.uniform(25, 60)),
        skin_temp_c=float(rng.uniform(32.6, 34.2)),
        spo2_percent=float(rng.uniform(95.5, 98.0)),
        sleep_start_h=float(rng.uniform(22.0, 24.5)),
        sleep_hours=float(rng.uniform(6.3, 8.3)),
        activity=float(rng.uniform(0.6, 1.4)),
        utc_offset_minutes=int(rng.choice([0, 60, 60, 120])),
        crp_baseline_mg_l=float(rng.uniform(0.3, 2.5)),
        birth_year=int(rng.integers(1945, 2002)),
        flares=_flare_schedule(rng),
        day_variability=day_variability,
        flare_gains=_flare_gains(seed, index, flare_response),
    )


def make_cohort(seed: int, n: int, *, first_index: int = 1, prefix: str = "P", day_variability: float = 0.0,
                flare_response: float = 0.0) -> list[Participant]:
    """`n` participants of a seeded cohort (see make_participant)."""
    return [make_participant(seed, i, prefix=prefix, day_variability=day_variability, flare_response=flare_response)
            for i in range(first_index, first_index + n)]
