"""HRV of version 2 from the beat series (Task Force 1996), mergeable across upload blocks in any order.

A window's NN series is the RR intervals of one device ending in the window, glued across blocks: block n+1
continues block n when its first interval starts (first beat time - first RR) within `rr_contiguity_ms` of
block n's last beat. Artefacts follow the percent-change rule (Malik et al. 1989; Kamath & Fallen 1995): an
interval is rejected if it lies outside the plausible RR range, or if it differs from the previous interval of the
series by more than `ectopic_percent` % of that previous interval (or that one is outside the range). The first
interval of a series (no previous interval in the window) is judged by the range only. A successive difference
counts only if both of its intervals are accepted.

Each (block, window) partial carries exact integer sums (microseconds) over its beats after the first, plus its
*edges*: first beat (time, RR, range-valid, acceptance of the second beat, second RR) and last beat (time, RR,
acceptance). The first beat's acceptance and the difference across a block boundary are decided when the window's
value is read (`resolve`), from the edges of every block then present, so the result does not depend on arrival
order, redeliveries or how the series was cut into blocks.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from clinstream.features import catalogue as cat
from clinstream.features.blocks import Block
from clinstream.features.config import FeatureSettings
from clinstream.features.partials import SCALE, Partial, columns, quantise, runs
from clinstream.features.windows import WindowKind

HRV_KINDS: tuple[WindowKind, ...] = (WindowKind.HOUR, WindowKind.DAY, WindowKind.LOCAL_DAY)  # no ultra-short-term
_PCT_SCALE = 1000  # ectopic percent in 1/1000 %


def _rule_ok(q: np.ndarray[Any, Any], prev: np.ndarray[Any, Any], pct_milli: int) -> np.ndarray[Any, Any]:
    """|q - prev| <= pct % of prev, exactly in integers."""
    return np.abs(q - prev) * (100 * _PCT_SCALE) <= pct_milli * prev  # type: ignore[no-any-return]


def partials(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Per (block, window): sums over the beats after the block's first in the window, and the block's edges."""
    cols = columns(blocks)
    if not len(cols):
        return []
    device = {i: b.device for i, b in blocks}
    valid = np.isfinite(cols.v) & (cols.v >= s.rr_min_ms) & (cols.v <= s.rr_max_ms)
    q = quantise(np.where(valid, cols.v, 0.0), SCALE[cat.HRV])
    pct = round(s.ectopic_percent * _PCT_SCALE)
    nn50 = round(s.nn50_ms * SCALE[cat.HRV])
    n = len(cols)
    out: list[Partial] = []
    for kind in HRV_KINDS:
        ws = cols.starts(kind)
        starts = runs(cols.blk, ws)
        ends = np.append(starts[1:], n)
        same = np.zeros(n, dtype=np.bool_)
        same[1:] = (cols.blk[1:] == cols.blk[:-1]) & (ws[1:] == ws[:-1])
        ok = np.zeros(n, dtype=np.bool_)  # accepted, for every beat with a predecessor in its group
        ok[1:] = same[1:] & valid[1:] & valid[:-1] & _rule_ok(q[1:], q[:-1], pct)
        inner = same  # beats after the first of their group
        pair = np.zeros(n, dtype=np.bool_)
        pair[1:] = same[1:] & ok[1:] & ok[:-1] & inner[:-1]
        d = np.zeros(n, dtype=np.int64)
        d[1:] = q[1:] - q[:-1]
        acc_q = np.where(ok, q, 0)
        sums = {
            "n": np.add.reduceat(ok.astype(np.int64), starts), "s1": np.add.reduceat(acc_q, starts),
            "s2": np.add.reduceat(acc_q * acc_q, starts), "nb": np.add.reduceat(inner.astype(np.int64), starts),
            "nd": np.add.reduceat(pair.astype(np.int64), starts),
            "ssd": np.add.reduceat(np.where(pair, d * d, 0), starts),
            "n50": np.add.reduceat((pair & (np.abs(d) > nn50)).astype(np.int64), starts),
        }
        lists = {k: v.tolist() for k, v in sums.items()}
        for g, (f, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            b, w, last = int(cols.blk[f]), int(ws[f]), e - 1
            t_f = int(cols.t[f])
            size = e - f
            edge = [t_f, int(q[f]), int(valid[f]), int(ok[f + 1]) if size > 1 else 0, int(q[f + 1]) if size > 1 else 0,
                    int(cols.t[last]), int(q[last]), int(ok[last]) if size > 1 else -1]
            acc: dict[str, Any] = {k: lists[k][g] for k in lists}
            acc["e"] = {f"{device[b]}|{t_f}": edge}
            out.append(Partial(b, cat.HRV, kind, w, acc))
    return out


def resolve(acc: dict[str, Any], s: FeatureSettings) -> dict[str, int]:
    """Exact sums of a window: the partials' inner sums plus every block's first beat and boundary difference."""
    scale = SCALE[cat.HRV]
    pct = round(s.ectopic_percent * _PCT_SCALE)
    nn50 = round(s.nn50_ms * scale)
    tol = s.rr_contiguity_ms * scale
    tot = {k: int(acc[k]) for k in ("n", "s1", "s2", "nb", "nd", "ssd", "n50")}
    by_device: dict[str, list[list[int]]] = defaultdict(list)
    for key, edge in acc["e"].items():
        by_device[key.rsplit("|", 1)[0]].append(edge)
    for edges in by_device.values():
        edges.sort()
        ends: list[tuple[int, int, int]] = []  # resolved (last beat time in scale units, last RR, accepted), sorted
        for t_f, q_f, valid_f, ok_1, q_1, t_l, q_l, ok_l in edges:
            tot["nb"] += 1
            prev = _predecessor(ends, t_f * scale - q_f, tol) if valid_f else None
            accepted = bool(valid_f) and (prev is None or (prev[1] > 0 and (
                abs(q_f - prev[1]) * 100 * _PCT_SCALE <= pct * prev[1])))
            if accepted:
                tot["n"] += 1
                tot["s1"] += q_f
                tot["s2"] += q_f * q_f
                if ok_1:
                    _add_diff(tot, q_1 - q_f, nn50)
                if prev is not None and prev[2]:
                    _add_diff(tot, q_f - prev[1], nn50)
            bisect.insort(ends, (t_l * scale, q_l, int(accepted) if ok_l == -1 else ok_l))
    return tot


def _predecessor(ends: list[tuple[int, int, int]], begin: int, tol: int) -> tuple[int, int, int] | None:
    """The resolved block end nearest to `begin` within the tolerance (earlier one on a tie)."""
    i = bisect.bisect_left(ends, (begin - tol, -1, -1))
    best: tuple[int, int, int] | None = None
    while i < len(ends) and ends[i][0] <= begin + tol:
        if best is None or abs(ends[i][0] - begin) < abs(best[0] - begin):
            best = ends[i]
        i += 1
    return best


def _add_diff(tot: dict[str, int], d: int, nn50: int) -> None:
    tot["nd"] += 1
    tot["ssd"] += d * d
    tot["n50"] += abs(d) > nn50


def values(acc: dict[str, Any], s: FeatureSettings) -> dict[str, float]:
    """SDNN (ddof=1), RMSSD and pNN50 over the accepted differences, withheld below the Task Force minimum."""
    tot = resolve(acc, s)
    scale = SCALE[cat.HRV]
    n = tot["n"]
    nn_minutes = tot["s1"] / scale / 60_000
    out: dict[str, float] = {"n_intervals": float(n), "n_differences": float(tot["nd"]),
                             "rejected_beats": float(tot["nb"] - n),
                             "rejected_share": (tot["nb"] - n) / tot["nb"] if tot["nb"] else 0.0,
                             "nn_minutes": nn_minutes}
    if nn_minutes >= s.hrv_min_nn_min and n >= 2 and tot["nd"] >= 1:
        num = n * tot["s2"] - tot["s1"] * tot["s1"]
        out["sdnn"] = math.sqrt(max(num, 0) / (n * (n - 1))) / scale
        out["rmssd"] = math.sqrt(tot["ssd"] / tot["nd"]) / scale
        out["pnn50"] = 100.0 * tot["n50"] / tot["nd"]
    return out
