"""Per-(block, window) partials of feature version 2 where its definitions differ from version 1.

* heart rate: version 1's sums, plus per-5-minute-epoch sums on day windows (resting heart rate);
* steps: each interval's count is spread over the minutes it covers in proportion to the overlap (milli-steps,
  rounded half up per interval and minute), so a 10-minute interval is not credited to its first minute;
* SpO2: every reading stands for the time until the next reading of its block, at most `spo2_max_hold_s` (the
  last reading of a block: the block's median spacing, same cap); time below the threshold is the held time of the
  readings below it (time-weighted, T90 at the default 90 %), credited to the window of the reading;
* sleep: episodes with their device and block sequence, so a revision (a later block of the same device whose
  episode overlaps) replaces the earlier episode when the window is read.

Like version 1, every sum is an exact integer and every partial a pure function of its block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clinstream.core.timeutil import MINUTE_MS
from clinstream.features import catalogue as cat
from clinstream.features import hrv_beats
from clinstream.features import partials as v1
from clinstream.features.blocks import Block
from clinstream.features.config import FeatureSettings
from clinstream.features.local_days import day_starts
from clinstream.features.partials import Columns, Groups, Partial, runs
from clinstream.features.windows import ALL_KINDS, DAY_KINDS, WindowKind, window_starts

EPOCH_MS = 5 * MINUTE_MS  # resting heart rate epoch


def _zoned(blocks: Sequence[tuple[int, Block]], blk: v1.I64, t: v1.I64) -> v1.I64 | None:
    """Local-day starts of instants ordered by block index (None unless the blocks carry zones)."""
    if not blocks or any(b.zone is None for _, b in blocks) or len(t) == 0:
        return None
    names, codes = v1.zone_codes(blocks)
    index = np.fromiter((i for i, _ in blocks), dtype=np.int64, count=len(blocks))
    zone_of_block = np.zeros(int(index.max()) + 1, dtype=np.int64)
    zone_of_block[index] = codes
    return v1.zoned_day_starts(names, zone_of_block[blk], blk, t)


def heart_rate(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Version 1's heart-rate partials plus, on day windows, per-epoch sample counts and sums (e5n, e5s)."""
    cols, q = v1.plausible_hr(blocks, s)
    out, by_kind = v1.heart_rate_indexed(cols, q)
    if not len(cols):
        return out
    for kind in DAY_KINDS:
        index = by_kind[kind]
        ws = cols.starts(kind)
        epoch = (cols.t - ws) // EPOCH_MS
        starts = runs(cols.blk, ws * 1024 + epoch)
        n = np.diff(np.append(starts, len(cols))).tolist()
        s1 = np.add.reduceat(q, starts).tolist()
        for g, (b, w, e) in enumerate(zip(cols.blk[starts].tolist(), ws[starts].tolist(), epoch[starts].tolist(),
                                          strict=True)):
            acc = index[(b, w)]
            acc.setdefault("e5n", {})[str(e)] = n[g]
            acc.setdefault("e5s", {})[str(e)] = s1[g]
    return out


def steps(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Milli-steps per window (`tot`) and per window-relative minute (`b`, windows longer than a minute)."""
    if not blocks:
        return []
    lens = [len(b.t_ms) for _, b in blocks]
    blk = np.repeat(np.array([i for i, _ in blocks], dtype=np.int64), lens)
    off = np.repeat(np.array([b.offset_ms for _, b in blocks], dtype=np.int64), lens)
    t = np.concatenate([b.t_ms for _, b in blocks]).astype(np.int64)
    dur = np.concatenate([b.durations_ms for _, b in blocks]).astype(np.int64)
    n = np.concatenate([b.values for _, b in blocks]).astype(np.int64)
    if not len(t):
        return []
    first = t // MINUTE_MS
    last = np.where(dur > 0, (t + dur - 1) // MINUTE_MS, first)
    k = last - first + 1
    rep = np.repeat(np.arange(len(t)), k)
    within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    minute = first[rep] + within
    lo = np.maximum(t[rep], minute * MINUTE_MS)
    hi = np.minimum(t[rep] + dur[rep], (minute + 1) * MINUTE_MS)
    d = dur[rep]
    milli = np.where(d > 0, (n[rep] * 1000 * (hi - lo) * 2 + d) // np.maximum(2 * d, 1), n[rep] * 1000)
    order = np.lexsort((lo, blk[rep]))
    pb, pt, po, pm, pmin = blk[rep][order], lo[order], off[rep][order], milli[order], minute[order]
    return v1.step_partials(Columns(pb, pt, po, pm.astype(np.float64), _zoned(blocks, pb, pt)), pm, pmin)


def _held_ms(cols: Columns, cap_ms: int) -> v1.I64:
    """How long each reading stands: until the next reading of its block, at most the cap."""
    n = len(cols)
    held = np.full(n, cap_ms, dtype=np.int64)
    if n > 1:
        same = cols.blk[1:] == cols.blk[:-1]
        gap = np.minimum(cols.t[1:] - cols.t[:-1], cap_ms)
        held[:-1] = np.where(same, gap, cap_ms)
    starts = runs(cols.blk, np.zeros(n, dtype=np.int64))
    ends = np.append(starts[1:], n)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a > 1:  # the last reading of a block: the block's median spacing (integer, lower median)
            held[b - 1] = min(int(np.sort(cols.t[a + 1:b] - cols.t[a:b - 1])[(b - a - 2) // 2]), cap_ms)
    return held


def spo2(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """n, sum, min (milli-%), held time and held time below the threshold (ms)."""
    cols, q = v1.plausible_spo2(blocks, s)
    if not len(cols):
        return []
    held = _held_ms(cols, s.spo2_max_hold_s * 1000)
    below = np.where(cols.v < s.spo2_low_percent, held, 0)
    out: list[Partial] = []
    for kind in ALL_KINDS:
        g = Groups.of(cols, kind)
        v1.add_partials(out, cat.SPO2, kind, g.keys(), [
            {"n": n, "s1": s1, "mn": mn, "ht": ht, "tb": tb}
            for n, s1, mn, ht, tb in zip(g.counts(), g.sums(q), g.mins(q), g.sums(held), g.sums(below), strict=True)])
    return out


def sleep(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Episodes in the LOCAL_DAY window of their end, keyed by device, block sequence and instants."""
    out: list[Partial] = []
    for i, block in blocks:
        if not block.episodes:
            continue
        ends = np.array([ep.end_ms for ep in block.episodes], dtype=np.int64)
        ws = (day_starts(block.zone, ends) if block.zone is not None
              else window_starts(WindowKind.LOCAL_DAY, ends, block.offset_ms)).tolist()
        index: dict[int, dict[str, Any]] = {}
        for ep, w in zip(block.episodes, ws, strict=True):
            acc = index.get(w)
            if acc is None:
                acc = index[w] = {"sv": {}}
                out.append(Partial(i, cat.SLEEP, WindowKind.LOCAL_DAY, w, acc))
            acc["sv"][f"{block.device}|{block.sequence}|{ep.start_ms}|{ep.end_ms}"] = [
                round(ep.total_sleep_time_min * 1000), ep.start_ms, ep.end_ms]
    return out


_REPLACED = {v1.heart_rate: heart_rate, v1.hrv: hrv_beats.partials, v1.steps: steps, v1.spo2: spo2, v1.sleep: sleep}
PARTIALS_V2 = {measurement: _REPLACED.get(fn, fn) for measurement, fn in v1.PARTIALS.items()}
