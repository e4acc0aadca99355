"""Feature values of version 2 from a window's accumulators, with each row's quality (coverage and a flag).

Every row carries `quality_ok` (1 or 0), the feature set's minimum-data rule:
* day windows (DAY, LOCAL_DAY): a valid day, at least `valid_day_wear_h` hours of wear (NHANES convention,
  Troiano et al. 2008), wear being minutes with a plausible heart-rate sample;
* shorter windows: at least half of the window worn (a project convention, no published source);
* HRV in addition: at least `hrv_min_nn_min` minutes of NN intervals (Task Force 1996 short-term recording);
* resting heart rate is withheld (absent) on a day that is not valid.
Completeness (coverage) is the row's `completeness` column: worn minutes / the window's true length in minutes.
"""

from __future__ import annotations

from typing import Any

from clinstream.core.timeutil import MINUTE_MS
from clinstream.features import accumulators, hrv_beats
from clinstream.features import catalogue as cat
from clinstream.features.config import FeatureSettings
from clinstream.features.partials import SCALE
from clinstream.features.windows import DAY_KINDS, WindowKind

_EPOCH_MINUTES = 5


def spo2_names(s: FeatureSettings) -> tuple[str, str]:
    """Names of the time-below features, named for the configured threshold (e.g. time_below_90_min)."""
    thr = f"{s.spo2_low_percent:g}".replace(".", "_")
    return f"time_below_{thr}_min", f"share_below_{thr}_percent"


def _valid(kind: WindowKind, wear_minutes: int, window_minutes: int, s: FeatureSettings) -> bool:
    if kind in DAY_KINDS:
        return wear_minutes >= s.valid_day_wear_h * 60
    return 2 * wear_minutes >= window_minutes


def _resting(acc: dict[str, Any], worn: int) -> float | None:
    """Lowest mean heart rate of a fully worn 5-minute epoch of the window."""
    best: float | None = None
    scale = SCALE[cat.HEART_RATE]
    full = (1 << _EPOCH_MINUTES) - 1
    for epoch, n in acc.get("e5n", {}).items():
        if (worn >> (int(epoch) * _EPOCH_MINUTES)) & full == full and n:
            mean = acc["e5s"][epoch] / (n * scale)
            best = mean if best is None else min(best, mean)
    return best


def values(feature_set: str, kind: WindowKind, acc: dict[str, Any], s: FeatureSettings,
           hr_acc: dict[str, Any] | None, window_minutes: int) -> dict[str, float]:
    """The catalogue values (version 2) of one window, with `quality_ok`."""
    worn = accumulators.mask_of(hr_acc, "w") if hr_acc else 0
    wear_minutes = worn.bit_count()
    ok = _valid(kind, wear_minutes, window_minutes, s)
    out: dict[str, float]
    if feature_set == cat.HEART_RATE:
        out = accumulators.values(feature_set, kind, {k: v for k, v in acc.items() if k != "h"}, s)
        if kind in DAY_KINDS and ok:
            resting = _resting(acc, worn)
            if resting is not None:
                out["resting"] = resting
    elif feature_set == cat.HRV:
        out = hrv_beats.values(acc, s)
        ok = ok and "sdnn" in out
    elif feature_set == cat.STEPS:
        threshold = s.active_cadence_spm * 1000
        out = {"total": acc["tot"] / 1000}
        if "b" in acc:
            out["active_minutes"] = float(sum(1 for v in acc["b"].values() if v >= threshold))
        else:
            out["active_minutes"] = 1.0 if acc["tot"] >= threshold else 0.0
    elif feature_set == cat.SPO2:
        scale = SCALE[cat.SPO2]
        below, share = spo2_names(s)
        out = {"mean": acc["s1"] / (acc["n"] * scale), "min": acc["mn"] / scale,
               below: acc["tb"] / MINUTE_MS, "time_observed_min": acc["ht"] / MINUTE_MS}
        if acc["ht"]:
            out[share] = 100.0 * acc["tb"] / acc["ht"]
    elif feature_set == cat.SKIN_TEMPERATURE:
        out = accumulators.values(feature_set, kind, acc, s)
    elif feature_set == cat.SLEEP:
        out = sleep_values(acc)
    else:
        raise ValueError(f"unknown feature set {feature_set!r}")
    out["quality_ok"] = 1.0 if ok else 0.0
    return out


def sleep_values(acc: dict[str, Any]) -> dict[str, float]:
    """Revisions replace, overlaps merge: time in bed is the union of the kept episodes."""
    by_device: dict[str, list[tuple[int, int, int, int]]] = {}
    for key, (tst, start, end) in acc["sv"].items():
        device, seq, _, _ = key.rsplit("|", 3)
        by_device.setdefault(device, []).append((int(seq), start, end, tst))
    kept: list[tuple[int, int, int]] = []
    for episodes in by_device.values():
        mine: list[tuple[int, int, int]] = []
        for _, start, end, tst in sorted(episodes, key=lambda e: (-e[0], e[1], e[2])):  # newest block first
            if not any(start < e and s < end for s, e, _ in mine):  # an older overlapping one was revised
                mine.append((start, end, tst))
        kept.extend(mine)
    kept.sort()
    groups: list[list[int]] = []  # [start, end, total sleep milli-min]
    for start, end, tst in kept:
        if groups and start < groups[-1][1]:
            g = groups[-1]
            g[1] = max(g[1], end)
            g[2] = max(g[2], tst)  # the same sleep seen twice: the larger total sleep time, capped below
        else:
            groups.append([start, end, tst])
    tib = sum(e - s for s, e, _ in groups) / MINUTE_MS
    tst_min = sum(min(t / 1000, (e - s) / MINUTE_MS) for s, e, t in groups)
    out = {"total_sleep_time_min": tst_min, "time_in_bed_min": tib, "episodes": float(len(groups))}
    if tib > 0:
        out["efficiency"] = tst_min / tib
    return out
