"""Mergeable, order-independent window accumulators: merging partials in and reading feature values out.

Accumulators are JSON-able dicts of exact integers (fixed point, see `partials.SCALE`); minute masks are kept as
hex strings (any length) and merged with OR; histograms and minute bins are dicts of counts. Merging is
commutative and associative, so the final value of a window does not depend on the order of its blocks.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Any

from clinstream.core.timeutil import MINUTE_MS
from clinstream.features import catalogue as cat
from clinstream.features.config import FeatureSettings
from clinstream.features.partials import SCALE
from clinstream.features.windows import LENGTH_MS, WindowKind

_MASKS = ("w", "lo")
_BY_IDENTITY = ("ep", "sv", "e")  # v1 sleep episodes, v2 sleep episodes, v2 HRV block edges


def mask_of(acc: dict[str, Any], field: str) -> int:
    """A minute mask of an accumulator as an int."""
    raw = acc.get(field)
    return int(raw, 16) if raw else 0


def merge(feature_set: str, acc: dict[str, Any], part: dict[str, Any]) -> None:
    """Fold a partial (masks as ints) into an accumulator (masks as hex) in place."""
    if not acc:
        for key, value in part.items():
            if key in _MASKS:
                acc[key] = format(value, "x")
            elif isinstance(value, dict):
                acc[key] = dict(value)
            else:
                acc[key] = value
        return
    for key, value in part.items():
        if key in _MASKS:
            acc[key] = format(mask_of(acc, key) | value, "x")
        elif key == "mn":
            acc[key] = min(acc[key], value)
        elif key == "mx":
            acc[key] = max(acc[key], value)
        elif key in _BY_IDENTITY:  # keyed facts (episodes, block edges): a re-sent one is the same one
            acc[key].update(value)
        elif isinstance(value, dict):
            target = acc.setdefault(key, {})
            for k, n in value.items():
                target[k] = target.get(k, 0) + n
        else:
            acc[key] = acc.get(key, 0) + value


def _sample_sd(n: int, s1: int, s2: int, scale: int) -> float | None:
    if n < 2:
        return None
    num = n * s2 - s1 * s1  # exact
    return math.sqrt(max(num, 0) / (n * (n - 1))) / scale


@lru_cache(maxsize=8)
def _share(percentile: float) -> Fraction:
    return Fraction(str(percentile)) / 100


def percentile_from_histogram(hist: dict[str, int], percentile: float) -> float | None:
    """Nearest-rank percentile (numpy's 'inverted_cdf') of a histogram of whole-number bins."""
    total = sum(hist.values())
    if not total:
        return None
    share = _share(percentile)
    rank = max(1, -(-total * share.numerator // share.denominator))  # ceil(total * p / 100), exact
    seen = 0
    for b in sorted(hist, key=int):
        seen += hist[b]
        if seen >= rank:
            return float(int(b))
    return None  # unreachable


def values(feature_set: str, kind: WindowKind, acc: dict[str, Any], s: FeatureSettings) -> dict[str, float]:
    """The catalogue values of one window's accumulator; undefined features are absent."""
    out: dict[str, float] = {}
    if feature_set == cat.HEART_RATE:
        n, scale = acc["n"], SCALE[cat.HEART_RATE]
        out["mean"] = acc["s1"] / (n * scale)
        out["min"] = acc["mn"] / scale
        out["max"] = acc["mx"] / scale
        sd = _sample_sd(n, acc["s1"], acc["s2"], scale)
        if sd is not None:
            out["sd"] = sd
        out["count"] = float(n)
        if "h" in acc:
            resting = percentile_from_histogram(acc["h"], s.resting_hr_percentile)
            if resting is not None:
                out["resting"] = resting
    elif feature_set == cat.HRV:
        n, scale = acc["n"], SCALE[cat.HRV]
        sdnn = _sample_sd(n, acc["s1"], acc["s2"], scale)
        if sdnn is not None:
            out["sdnn"] = sdnn
        if acc["nd"]:
            out["rmssd"] = math.sqrt(acc["ssd"] / acc["nd"]) / scale
            out["pnn50"] = 100.0 * acc["n50"] / acc["nd"]
        out["n_intervals"] = float(n)
    elif feature_set == cat.STEPS:
        out["total"] = float(acc["tot"])
        if "b" in acc:
            out["active_minutes"] = float(sum(1 for n in acc["b"].values() if n >= s.active_minute_steps))
        else:
            out["active_minutes"] = 1.0 if acc["tot"] >= s.active_minute_steps else 0.0
    elif feature_set == cat.SPO2:
        scale = SCALE[cat.SPO2]
        out["mean"] = acc["s1"] / (acc["n"] * scale)
        out["min"] = acc["mn"] / scale
        out["minutes_below_90"] = float(mask_of(acc, "lo").bit_count())
    elif feature_set == cat.SKIN_TEMPERATURE:
        out["mean"] = acc["s1"] / (acc["n"] * SCALE[cat.SKIN_TEMPERATURE])
    elif feature_set == cat.SLEEP:
        episodes = [acc["ep"][k] for k in sorted(acc["ep"])]
        tst = sum(e[0] for e in episodes) / 1000
        tib = sum(e[1] for e in episodes) / MINUTE_MS
        out["total_sleep_time_min"] = tst
        out["time_in_bed_min"] = tib
        if tib > 0:
            out["efficiency"] = tst / tib
        out["episodes"] = float(len(episodes))
    else:
        raise ValueError(f"unknown feature set {feature_set!r}")
    return out


def completeness(hr_acc: dict[str, Any] | None, kind: WindowKind) -> float:
    """Share of the window's minutes holding at least one plausible heart-rate sample."""
    if not hr_acc:
        return 0.0
    return mask_of(hr_acc, "w").bit_count() / (LENGTH_MS[kind] // MINUTE_MS)
