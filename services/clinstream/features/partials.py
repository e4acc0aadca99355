"""Per-(block, window) partial accumulators of a batch of blocks, computed with numpy across all blocks at once.

Samples of every block of one measurement are concatenated and kept in (block, event time) order, so each
(block, window) group is a contiguous run; sums use `np.add.reduceat`. Values are quantised to fixed point
(`SCALE`) and summed as exact integers, so merged accumulators do not depend on arrival order (bit-identical
results) and sums of squares do not lose precision. Python loops run per group or per distinct minute, never
per reading.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from clinstream.core.timeutil import MINUTE_MS
from clinstream.features import catalogue as cat
from clinstream.features.blocks import (
    HEART_RATE_SAMPLES,
    RR_SAMPLES,
    SKIN_SAMPLES,
    SLEEP_EPISODES,
    SPO2_SAMPLES,
    STEP_SAMPLES,
    Block,
)
from clinstream.features.config import FeatureSettings
from clinstream.features.local_days import day_starts
from clinstream.features.windows import ALL_KINDS, DAY_KINDS, WindowKind, window_start_of, window_starts

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]

# Fixed-point resolution of each quantity (units per stored integer step).
SCALE: dict[str, int] = {cat.HEART_RATE: 1000, cat.HRV: 1000, cat.SPO2: 1000, cat.SKIN_TEMPERATURE: 10_000}
_HIST_BITS = 10  # 1-bpm histogram bins 0..1023
_BIN_NAMES = tuple(str(b) for b in range(1 << _HIST_BITS))  # a bin's key in an accumulator's histogram
_ONE_CALL_SPAN_MS = 400 * 86_400_000  # instants of a batch within this span get their local days in one call


@dataclass(slots=True)
class Partial:
    """What one block contributes to one window of one feature set (JSON-able `acc`, masks as ints)."""

    block: int
    feature_set: str
    kind: WindowKind
    start: int
    acc: dict[str, Any]


@dataclass(slots=True)
class Columns:
    """Samples of many blocks: block index, event time, block UTC offset, value and (zoned) local-day start."""

    blk: I64
    t: I64
    off: I64
    v: F64
    lday: I64 | None = None

    def select(self, mask: BOOL) -> Columns:
        """The rows of a mask."""
        return Columns(self.blk[mask], self.t[mask], self.off[mask], self.v[mask],
                       None if self.lday is None else self.lday[mask])

    def take(self, order: I64) -> Columns:
        """The rows in an order."""
        return Columns(self.blk[order], self.t[order], self.off[order], self.v[order],
                       None if self.lday is None else self.lday[order])

    def starts(self, kind: WindowKind) -> I64:
        """Window start of every row (LOCAL_DAY from the zone when the blocks carry one, else from the offset)."""
        if kind is WindowKind.LOCAL_DAY and self.lday is not None:
            return self.lday
        return window_starts(kind, self.t, self.off)

    def __len__(self) -> int:
        return len(self.t)


def local_day_starts(blocks: Sequence[tuple[int, Block]], times: Sequence[I64]) -> I64 | None:
    """Zoned local-day starts of each block's instants, concatenated (None unless every block carries a zone)."""
    if not blocks or any(b.zone is None for _, b in blocks):
        return None
    t = np.concatenate(times) if times else np.empty(0, dtype=np.int64)
    lens = np.fromiter((len(x) for x in times), dtype=np.int64, count=len(times))
    names, codes = zone_codes(blocks)
    return zoned_day_starts(names, np.repeat(codes, lens), np.repeat(np.arange(len(blocks), dtype=np.int64), lens), t)


def zone_codes(blocks: Sequence[tuple[int, Block]]) -> tuple[list[str], I64]:
    """The distinct zones of blocks (sorted) and each block's index into them, in the order of `blocks`."""
    names = sorted({str(b.zone) for _, b in blocks})
    code = {z: i for i, z in enumerate(names)}
    return names, np.fromiter((code[str(b.zone)] for _, b in blocks), dtype=np.int64, count=len(blocks))


def zoned_day_starts(zones: Sequence[str], row_zone: I64, blk: I64, t: I64) -> I64:
    """Local-day start of each instant in its row's zone (`zones[row_zone]`, rows ordered by block `blk`): one
    `day_starts` per zone, or per block for a zone whose instants span more than 400 days (`day_starts` makes a
    table of every midnight in its span)."""
    out = np.empty(len(t), dtype=np.int64)
    for i, zone in enumerate(zones):
        rows = row_zone == i
        zt = t[rows]
        if len(zt) == 0:
            continue
        if int(zt.max()) - int(zt.min()) <= _ONE_CALL_SPAN_MS:
            out[rows] = day_starts(zone, zt)
        else:
            zb = blk[rows]
            starts = runs(zb, np.zeros(len(zb), dtype=np.int64)).tolist()
            out[rows] = np.concatenate([day_starts(zone, zt[a:b])
                                        for a, b in zip(starts, [*starts[1:], len(zt)], strict=True)])
    return out


def columns(blocks: Sequence[tuple[int, Block]]) -> Columns:
    """The samples of blocks in (block, event time) order."""
    lens = np.fromiter((len(b.t_ms) for _, b in blocks), dtype=np.int64, count=len(blocks))
    blk = np.repeat(np.fromiter((i for i, _ in blocks), dtype=np.int64, count=len(blocks)), lens)
    off = np.repeat(np.fromiter((b.offset_ms for _, b in blocks), dtype=np.int64, count=len(blocks)), lens)
    t = np.concatenate([b.t_ms for _, b in blocks]) if blocks else np.empty(0, dtype=np.int64)
    v = np.concatenate([b.values for _, b in blocks]) if blocks else np.empty(0, dtype=np.float64)
    cols = Columns(blk, t.astype(np.int64, copy=False), off, v.astype(np.float64, copy=False),
                   local_day_starts(blocks, [b.t_ms for _, b in blocks]))
    if len(t) > 1 and bool(((blk[1:] == blk[:-1]) & (t[1:] < t[:-1])).any()):
        cols = cols.take(np.lexsort((t, blk)))  # stable: equal instants keep their order
    return cols


def runs(blk: I64, key: I64) -> I64:
    """Start indices of the runs of equal (blk, key) in arrays ordered by block."""
    if len(blk) == 0:
        return np.empty(0, dtype=np.int64)
    change = np.flatnonzero((blk[1:] != blk[:-1]) | (key[1:] != key[:-1])) + 1
    return np.concatenate((np.zeros(1, dtype=np.int64), change))


def _group_ids(starts: I64, n: int) -> I64:
    marks = np.zeros(n, dtype=np.int64)
    marks[starts[1:]] = 1
    return np.cumsum(marks)


def quantise(v: F64, scale: int) -> I64:
    """Values as fixed-point integers (units of 1/scale)."""
    return np.rint(v * scale).astype(np.int64)


def plausible(blocks: Sequence[tuple[int, Block]], lo: float, hi: float, feature_set: str) -> tuple[Columns, I64]:
    """The readings of blocks within [lo, hi] and their fixed-point values."""
    cols = columns(blocks)
    cols = cols.select(np.isfinite(cols.v) & (cols.v >= lo) & (cols.v <= hi))
    return cols, quantise(cols.v, SCALE[feature_set])


@dataclass(frozen=True, slots=True)
class Groups:
    """The (block, window) groups of columns in (block, event time) order for one window kind: runs of rows."""

    ws: I64  # window start of every row
    starts: I64  # first row of every group
    blk: I64
    rows: int

    @classmethod
    def of(cls, cols: Columns, kind: WindowKind) -> Groups:
        """The groups of one window kind."""
        ws = cols.starts(kind)
        return cls(ws, runs(cols.blk, ws), cols.blk, len(cols))

    def keys(self) -> list[tuple[int, int]]:
        """(block, window start) of every group."""
        return list(zip(self.blk[self.starts].tolist(), self.ws[self.starts].tolist(), strict=True))

    def counts(self) -> list[int]:
        """Rows of every group."""
        return list(np.diff(np.append(self.starts, self.rows)).tolist())

    def sums(self, x: I64) -> list[int]:
        """Sum of x over every group."""
        return list(np.add.reduceat(x, self.starts).tolist())

    def mins(self, x: I64) -> list[int]:
        """Minimum of x over every group."""
        return list(np.minimum.reduceat(x, self.starts).tolist())


def add_partials(out: list[Partial], feature_set: str, kind: WindowKind, keys: list[tuple[int, int]],
                 accs: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Append one partial per (block, window) key to out; the accumulators by key."""
    parts = [Partial(b, feature_set, kind, w, acc) for (b, w), acc in zip(keys, accs, strict=True)]
    out.extend(parts)
    return {(p.block, p.start): p.acc for p in parts}


def minute_bits(cols: Columns, mask: BOOL, kind: WindowKind, index: dict[tuple[int, int], dict[str, Any]],
                 field: str) -> None:
    """OR into each group's `field` the bits of the window-relative minutes holding a selected sample."""
    sel = cols.select(mask)
    minute = sel.t // MINUTE_MS
    starts = runs(sel.blk, minute)
    if len(starts) == 0:
        return
    ws = sel.starts(kind)[starts]
    for b, m, w in zip(sel.blk[starts].tolist(), minute[starts].tolist(), ws.tolist(), strict=True):
        acc = index[(b, w)]
        acc[field] |= 1 << (m - w // MINUTE_MS)


def heart_rate(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """n, sum, sum of squares, min, max (milli-bpm), wear minutes and, on day windows, the 1-bpm histogram."""
    return heart_rate_of(*plausible_hr(blocks, s))


def plausible_hr(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> tuple[Columns, I64]:
    """The plausible heart-rate readings of blocks and their fixed-point values."""
    return plausible(blocks, s.hr_min_bpm, s.hr_max_bpm, cat.HEART_RATE)


def heart_rate_windows(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[tuple[int, WindowKind, int]]:
    """The (block, window kind, window start) of every partial `heart_rate` makes of blocks (either version), without
    computing the partials."""
    cols, _ = plausible_hr(blocks, s)
    out: list[tuple[int, WindowKind, int]] = []
    for kind in ALL_KINDS:
        groups = Groups.of(cols, kind)
        out.extend((b, kind, w) for b, w in groups.keys())  # noqa: SIM118 (Groups is not a dict)
    return out


def heart_rate_of(cols: Columns, q: I64) -> list[Partial]:
    """`heart_rate` of plausible readings (`plausible_hr`)."""
    return heart_rate_indexed(cols, q)[0]


def heart_rate_indexed(cols: Columns, q: I64) -> tuple[list[Partial], dict[WindowKind, dict[tuple[int, int],
                                                                                              dict[str, Any]]]]:
    """`heart_rate_of`, and per window kind its accumulators by (block, window start)."""
    by_kind: dict[WindowKind, dict[tuple[int, int], dict[str, Any]]] = {}
    if not len(cols):
        return [], by_kind
    bins = np.clip((q + 500) // 1000, 0, (1 << _HIST_BITS) - 1)  # round half up to whole bpm
    everything = np.ones(len(cols), dtype=np.bool_)
    q2 = q * q
    out: list[Partial] = []
    # A kind whose groups are the same runs of rows as the previous kind's (a block within one hour has one group
    # per hour, day and local day) has the same sums and histograms: computed once (a histogram shared by partials
    # is only read: `accumulators.merge` copies it).
    sums_of: tuple[I64, list[tuple[int, ...]]] | None = None
    hists_of: tuple[I64, list[dict[str, int]]] | None = None
    for kind in ALL_KINDS:
        g = Groups.of(cols, kind)
        if sums_of is None or not np.array_equal(sums_of[0], g.starts):
            mx = np.maximum.reduceat(q, g.starts).tolist()
            sums_of = (g.starts, list(zip(g.counts(), g.sums(q), g.sums(q2), g.mins(q), mx, strict=True)))
        accs: list[dict[str, Any]] = [{"n": n, "s1": s1, "s2": s2, "mn": mn, "mx": x, "w": 0}
                                      for n, s1, s2, mn, x in sums_of[1]]
        index = by_kind[kind] = add_partials(out, cat.HEART_RATE, kind, g.keys(), accs)
        minute_bits(cols, everything, kind, index, "w")
        if kind in DAY_KINDS:
            if hists_of is None or not np.array_equal(hists_of[0], g.starts):
                hists_of = (g.starts, _histograms(g, bins))
            for acc, hist in zip(accs, hists_of[1], strict=True):
                acc["h"] = hist
    return out, by_kind


def _histograms(g: Groups, bins: I64) -> list[dict[str, int]]:
    """Per group, the count of rows in each 1-bpm bin (bin number as text), each group's dict built in one call."""
    keys, n_in_bin = np.unique((_group_ids(g.starts, g.rows) << _HIST_BITS) | bins, return_counts=True)
    bounds = np.searchsorted(keys >> _HIST_BITS, np.arange(len(g.starts) + 1)).tolist()
    names = list(map(_BIN_NAMES.__getitem__, (keys & ((1 << _HIST_BITS) - 1)).tolist()))
    counts = n_in_bin.tolist()
    return [dict(zip(names[a:b], counts[a:b], strict=True)) for a, b in itertools.pairwise(bounds)]


def hrv(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """NN count, sum, sum of squares (us), and successive-difference count, sum of squares and NN50 count."""
    cols = columns(blocks)
    if not len(cols):
        return []
    valid = np.isfinite(cols.v) & (cols.v >= s.rr_min_ms) & (cols.v <= s.rr_max_ms)
    q = quantise(np.where(valid, cols.v, 0.0), SCALE[cat.HRV])
    nn50 = round(s.nn50_ms * SCALE[cat.HRV])
    same_block = cols.blk[1:] == cols.blk[:-1]
    diff = q[1:] - q[:-1]
    out: list[Partial] = []
    for kind in ALL_KINDS:
        ws = cols.starts(kind)
        starts = runs(cols.blk, ws)
        pair = valid[1:] & valid[:-1] & same_block & (ws[1:] == ws[:-1])
        d2 = np.zeros(len(cols), dtype=np.int64)
        d2[1:] = np.where(pair, diff * diff, 0)
        nd = np.zeros(len(cols), dtype=np.int64)
        nd[1:] = pair
        n50 = np.zeros(len(cols), dtype=np.int64)
        n50[1:] = pair & (np.abs(diff) > nn50)
        n = np.add.reduceat(valid.astype(np.int64), starts).tolist()
        s1 = np.add.reduceat(q, starts).tolist()
        s2 = np.add.reduceat(q * q, starts).tolist()
        nd_g = np.add.reduceat(nd, starts).tolist()
        ssd = np.add.reduceat(d2, starts).tolist()
        n50_g = np.add.reduceat(n50, starts).tolist()
        for g, (b, w) in enumerate(zip(cols.blk[starts].tolist(), ws[starts].tolist(), strict=True)):
            if n[g]:
                out.append(Partial(b, cat.HRV, kind, w, {"n": n[g], "s1": s1[g], "s2": s2[g], "nd": nd_g[g],
                                                           "ssd": ssd[g], "n50": n50_g[g]}))
    return out


def steps(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Step totals, plus per-minute step bins (window-relative minute -> steps) on windows longer than a minute."""
    cols = columns(blocks)
    if not len(cols):
        return []
    return step_partials(cols, cols.v.astype(np.int64), cols.t // MINUTE_MS)


def step_partials(cols: Columns, amount: I64, minute: I64) -> list[Partial]:
    """Totals of `amount` per (block, window) and, on windows longer than a minute, per window-relative minute.

    `minute` is each row's minute (rows of one block and minute are contiguous).
    """
    minute_runs = runs(cols.blk, minute)
    per_minute = np.add.reduceat(amount, minute_runs).tolist()
    out: list[Partial] = []
    for kind in ALL_KINDS:
        g = Groups.of(cols, kind)
        binned = kind is not WindowKind.MINUTE
        accs: list[dict[str, Any]] = [{"tot": total, "b": {}} if binned else {"tot": total}
                                      for total in g.sums(amount)]
        index = add_partials(out, cat.STEPS, kind, g.keys(), accs)
        if binned:
            add_minute_bins(index, cols.blk[minute_runs], minute[minute_runs], g.ws[minute_runs], per_minute)
    return out


def add_minute_bins(index: dict[tuple[int, int], dict[str, Any]], blk: I64, minute: I64, ws: I64,
                    counts: list[int]) -> None:
    """Add each (block, minute) count to the window-relative minute bin `b` of its (block, window) accumulator."""
    for b, m, w, n in zip(blk.tolist(), minute.tolist(), ws.tolist(), counts, strict=True):
        if n:
            bins = index[(b, w)]["b"]
            rel = str(m - w // MINUTE_MS)
            bins[rel] = bins.get(rel, 0) + n


def plausible_spo2(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> tuple[Columns, I64]:
    """The plausible SpO2 readings of blocks and their fixed-point values."""
    return plausible(blocks, s.spo2_min_percent, s.spo2_max_percent, cat.SPO2)


def spo2(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """n, sum, min (milli-%) and the minutes with a reading below the low threshold."""
    cols, q = plausible_spo2(blocks, s)
    if not len(cols):
        return []
    low = cols.v < s.spo2_low_percent
    out: list[Partial] = []
    for kind in ALL_KINDS:
        g = Groups.of(cols, kind)
        accs: list[dict[str, Any]] = [{"n": n, "s1": s1, "mn": mn, "lo": 0}
                                      for n, s1, mn in zip(g.counts(), g.sums(q), g.mins(q), strict=True)]
        minute_bits(cols, low, kind, add_partials(out, cat.SPO2, kind, g.keys(), accs), "lo")
    return out


def skin_temperature(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """n and sum (1e-4 degC) of plausible skin temperatures."""
    cols, q = plausible(blocks, s.skin_min_c, s.skin_max_c, cat.SKIN_TEMPERATURE)
    if not len(cols):
        return []
    out: list[Partial] = []
    for kind in ALL_KINDS:
        g = Groups.of(cols, kind)
        add_partials(out, cat.SKIN_TEMPERATURE, kind, g.keys(),
                     [{"n": n, "s1": s1} for n, s1 in zip(g.counts(), g.sums(q), strict=True)])
    return out


def sleep(blocks: Sequence[tuple[int, Block]], s: FeatureSettings) -> list[Partial]:
    """Episodes by (start, end) instant, each in the LOCAL_DAY window of its end: [sleep milli-min, bed ms]."""
    out: list[Partial] = []
    for i, block in blocks:
        index: dict[int, dict[str, Any]] = {}
        for ep in block.episodes:
            w = window_start_of(WindowKind.LOCAL_DAY, ep.end_ms, block.offset_ms)
            acc = index.get(w)
            if acc is None:
                acc = index[w] = {"ep": {}}
                out.append(Partial(i, cat.SLEEP, WindowKind.LOCAL_DAY, w, acc))
            acc["ep"][f"{ep.start_ms}-{ep.end_ms}"] = [round(ep.total_sleep_time_min * 1000), ep.end_ms - ep.start_ms]
    return out


PARTIALS = {
    HEART_RATE_SAMPLES: heart_rate, RR_SAMPLES: hrv, STEP_SAMPLES: steps, SPO2_SAMPLES: spo2,
    SKIN_SAMPLES: skin_temperature, SLEEP_EPISODES: sleep,
}

# Measurements whose partials (in both versions) are sums over readings that do not depend on block boundaries: the
# blocks of one participant (same zone and UTC offset) can be folded as one, and these give their windows.
WINDOWS_OF_SUMS = {HEART_RATE_SAMPLES: (cat.HEART_RATE, heart_rate_windows)}
