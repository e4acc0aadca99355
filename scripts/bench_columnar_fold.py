"""Design experiment, not product code: what folding heart-rate blocks into columnar window state would cost.

The features stage now keeps one JSON-able dict per window and admits and merges each (block, window) pair in
Python: about 85 µs per 60-reading block on this machine for the fold alone (issue 14's profiles). This script
sizes the redesign that issue names: per window kind one set of numpy columns (window key, count, sums, min, max,
revision), merged per batch with sorted-key look-ups, and the block dedup record kept once per device (sorted keys
of device and sequence) instead of once per window entry. Per batch of blocks it:

1. drops the blocks whose (device, sequence) is already recorded, and records the others;
2. per window kind, cuts every block's readings into runs of one window (they are in time order within a block),
   reduces each run to count, sum, sum of squares, min and max, then sums the runs of each window of the batch;
3. merges those into the kind's state (existing windows updated in place, new ones inserted in key order);
4. evicts windows past their horizon and sequences older than the dedup horizon.

It leaves out what the product also does: local days and zones, minute masks, histograms (percentiles), late blocks
by arrival order, computed_at, emission and the changelog. So it is a lower bound for the fold, to compare with the
dict fold's cost; the cohort's readings are synthetic (no person's data).

    .venv/bin/python scripts/bench_columnar_fold.py --participants 10000 --rounds 6
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
MINUTE_MS = 60_000
T0_MS = 1_767_225_600_000
READINGS = 60  # 1 Hz, one-minute blocks
KINDS = {"MINUTE": MINUTE_MS, "HOUR": 60 * MINUTE_MS, "DAY": 1440 * MINUTE_MS}
HORIZON = {"MINUTE": 5, "HOUR": 2, "DAY": 2}  # windows of the kind kept after the newest one
DEDUP_HORIZON = 30  # sequences kept per device below the newest
_LOW = np.int64(0xFFFFFFFF)


def _empty() -> I64:
    return np.empty(0, dtype=np.int64)


@dataclass
class KindState:
    """One window kind's open windows as columns sorted by key (participant << 32 | window number)."""

    keys: I64 = field(default_factory=_empty)
    n: I64 = field(default_factory=_empty)
    s1: I64 = field(default_factory=_empty)
    s2: I64 = field(default_factory=_empty)
    mn: I64 = field(default_factory=_empty)
    mx: I64 = field(default_factory=_empty)
    rev: I64 = field(default_factory=_empty)

    def columns(self) -> tuple[str, ...]:
        return ("n", "s1", "s2", "mn", "mx", "rev")

    def merge(self, keys: I64, parts: dict[str, I64]) -> None:
        """Fold a batch's per-window partials (unique sorted keys) into the state."""
        pos = np.searchsorted(self.keys, keys)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        at = pos[hit]
        for name in ("n", "s1", "s2", "rev"):
            getattr(self, name)[at] += parts[name][hit]
        self.mn[at] = np.minimum(self.mn[at], parts["mn"][hit])
        self.mx[at] = np.maximum(self.mx[at], parts["mx"][hit])
        new = ~hit
        if new.any():
            merged = np.concatenate([self.keys, keys[new]])
            order = np.argsort(merged, kind="stable")
            self.keys = merged[order]
            for name in self.columns():
                setattr(self, name, np.concatenate([getattr(self, name), parts[name][new]])[order])

    def evict_before(self, window: int) -> None:
        """Drop the windows numbered below `window` (final and emitted, in the product)."""
        live = (self.keys & _LOW) >= window
        if not live.all():
            self.keys = self.keys[live]
            for name in self.columns():
                setattr(self, name, getattr(self, name)[live])


class ColumnarFold:
    """The state of every window kind and the per-device dedup record."""

    def __init__(self) -> None:
        self.kinds = {kind: KindState() for kind in KINDS}
        self.seen = _empty()  # sorted device << 32 | sequence

    def fold(self, device: I64, sequence: I64, start_ms: I64, values: I64) -> int:
        """Fold one batch of blocks (device = participant here); returns the blocks accepted."""
        block_keys = (device << 32) | sequence
        if len(self.seen):
            pos = np.minimum(np.searchsorted(self.seen, block_keys), len(self.seen) - 1)
            fresh = self.seen[pos] != block_keys
        else:
            fresh = np.ones(len(block_keys), dtype=bool)
        if not fresh.any():
            return 0
        self.seen = np.sort(np.concatenate([self.seen, block_keys[fresh]]))
        device, start_ms, values = device[fresh], start_ms[fresh], values[fresh]
        t = (start_ms[:, None] + np.arange(READINGS, dtype=np.int64) * 1000).ravel()
        q = values.ravel()
        q2 = q * q
        owner = np.repeat(device, READINGS)
        block = np.repeat(np.arange(len(device)), READINGS)
        newest = int(t.max())
        for kind, length in KINDS.items():
            window = t // length
            cut = np.flatnonzero(np.concatenate(([True], (block[1:] != block[:-1]) | (window[1:] != window[:-1]))))
            run_keys = (owner[cut] << 32) | window[cut]
            runs = {"n": np.diff(np.append(cut, len(q))), "s1": np.add.reduceat(q, cut),
                    "s2": np.add.reduceat(q2, cut), "mn": np.minimum.reduceat(q, cut),
                    "mx": np.maximum.reduceat(q, cut), "rev": np.ones(len(cut), dtype=np.int64)}
            order = np.argsort(run_keys, kind="stable")
            sorted_keys = run_keys[order]
            first = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
            parts = {name: (np.minimum if name == "mn" else np.maximum if name == "mx" else np.add).reduceat(
                column[order], first) for name, column in runs.items()}
            state = self.kinds[kind]
            state.merge(sorted_keys[first], parts)
            state.evict_before(newest // length - HORIZON[kind])
        self.seen = self.seen[(self.seen & _LOW) >= int(sequence.max()) - DEDUP_HORIZON]
        return int(fresh.sum())


def batches(participants: int, rounds: int, blocks_per_request: int, batch: int, seed: int
            ) -> list[tuple[I64, I64, I64, I64]]:
    """Rounds of requests (every participant sends `blocks_per_request` consecutive minutes), cut into batches."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rounds):
        device = np.repeat(np.arange(participants, dtype=np.int64), blocks_per_request)
        minute = r * blocks_per_request + np.tile(np.arange(blocks_per_request, dtype=np.int64), participants)
        values = rng.integers(550, 800, (len(device), READINGS), dtype=np.int64)  # 0.1 bpm
        start = T0_MS + minute * MINUTE_MS
        for i in range(0, len(device), batch):
            out.append((device[i:i + batch], minute[i:i + batch], start[i:i + batch], values[i:i + batch]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--blocks-per-request", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000, help="blocks per batch (the worker's FEATURES_BATCH_MAX)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = batches(args.participants, args.rounds, args.blocks_per_request, args.batch, args.seed)
    fold = ColumnarFold()
    started = time.process_time()
    accepted = sum(fold.fold(*b) for b in work)
    again = sum(fold.fold(*b) for b in work[-3:])  # the last batches delivered again: all duplicates
    cpu = time.process_time() - started
    blocks = sum(len(b[0]) for b in work) + sum(len(b[0]) for b in work[-3:])
    print(f"{blocks:,} blocks ({accepted:,} accepted, {again} of the redelivered ones) in {cpu:.2f} CPU-s: "
          f"{cpu / blocks * 1e6:.1f} µs per block; open windows {sum(len(s.keys) for s in fold.kinds.values()):,}")


if __name__ == "__main__":
    main()
