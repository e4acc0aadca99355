"""Durable feature state over an injected mapping: window, sample, baseline and watermark entries, batch-cached.

Every key carries the input partition it belongs to as its second '/'-separated part, so a host can write each
changelog record to the partition of the participant's input (co-partitioning):

* ``w/<p>/<pseudonym>/<feature set>/<window kind>/<window start ms>`` - one window's accumulator, dedup record
  (per-device block sequence ranges), revision and computed_at;
* ``s/<p>/<pseudonym>/<sample pseudonym>`` - one biobank sample's events (by event id) and children;
* ``b/<p>/<pseudonym>`` - the participant's final local-day skin-temperature sums (rolling baseline);
* ``x/<p>/<pseudonym>`` - erasure tombstone: records of an erased participant are dropped;
* ``__wm__/<p>`` - the partition's watermark (max accepted event time).

Reads and writes of a batch go through a cache; `flush` writes each changed key once, window/sample entries
first and watermarks last, so a durable watermark implies durable entries for the same changelog partition.
An in-memory index (partition -> heap of window deadlines, each with its feature set's rank) finds the windows to
finalise in the order they are finalised, and another (pseudonym -> feature sets with windows) spares probing for
windows a participant never had; both are rebuilt from the keys after `reset_index` (a host calls that after a
rebalance).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from clinstream.features.windows import WindowKind

Entry = dict[str, Any]
WM_PREFIX = "__wm__"
WINDOW_PREFIX = "w/"
_NO_WATERMARK = -(2**62)


def window_key(p: int, pseudonym: str, feature_set: str, kind: WindowKind, start: int) -> str:
    """Key of one window entry."""
    return f"w/{p}/{pseudonym}/{feature_set}/{kind.value}/{start}"


_KINDS = {k.value: k for k in WindowKind}


def parse_window_key(key: str) -> tuple[int, str, str, WindowKind, int]:
    """(partition, pseudonym, feature set, kind, start) of a window key."""
    _, p, pseudonym, feature_set, kind, start = key.split("/")
    return int(p), pseudonym, feature_set, _KINDS[kind], int(start)


def sample_key(p: int, pseudonym: str, sample: str) -> str:
    """Key of one biobank sample entry."""
    return f"s/{p}/{pseudonym}/{sample}"


def baseline_key(p: int, pseudonym: str) -> str:
    """Key of a participant's skin-temperature baseline days."""
    return f"b/{p}/{pseudonym}"


def tombstone_key(p: int, pseudonym: str) -> str:
    """Key of a participant's erasure tombstone."""
    return f"x/{p}/{pseudonym}"


def watermark_key(p: int) -> str:
    """Key of a partition's watermark."""
    return f"{WM_PREFIX}/{p}"


def partition_of(key: str) -> int:
    """The input partition a state key belongs to."""
    return int(key.split("/", 2)[1])


def pseudonym_of(key: str) -> str | None:
    """The participant pseudonym of a participant-scoped key (None for watermarks)."""
    parts = key.split("/", 3)
    return parts[2] if parts[0] != WM_PREFIX and len(parts) > 2 else None


class FeatureState:
    """The processor's view of the durable mapping: cached reads, coalesced writes, deadline index."""

    def __init__(self, mapping: MutableMapping[str, Entry], deadline_ms: dict[WindowKind, int],
                 rank: Mapping[str, int]) -> None:
        self.mapping = mapping
        self._deadline_ms = deadline_ms
        self._rank = rank  # feature set -> its place among windows of the same deadline (`pop_due`)
        self._cache: dict[str, Entry | None] = {}
        self._dirty: dict[str, None] = {}
        self._heaps: dict[int, list[tuple[int, int, str]]] | None = None
        self._sets: dict[str, set[str]] = {}  # pseudonym -> feature sets it has had windows of (since the index)

    # --- entries -------------------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The current entry of a key (cached for the batch)."""
        if key in self._cache:
            return self._cache[key]
        entry = self.mapping.get(key)
        self._cache[key] = entry
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Set an entry; written at `flush`."""
        if key.startswith(WINDOW_PREFIX) and self.get(key) is None:
            self._index_add(key)
        self._cache[key] = entry
        self._dirty[key] = None

    def delete(self, key: str) -> None:
        """Delete an entry at `flush`."""
        self._cache[key] = None
        self._dirty[key] = None

    def flush(self) -> None:
        """Write every changed key once: entries first, watermarks last; then clear the batch cache."""
        watermarks = [key for key in self._dirty if key.startswith(WM_PREFIX)]
        for key in [key for key in self._dirty if not key.startswith(WM_PREFIX)] + watermarks:
            entry = self._cache[key]
            if entry is None:
                if key in self.mapping:
                    del self.mapping[key]
            else:
                self.mapping[key] = entry
        self._cache.clear()
        self._dirty.clear()

    # --- watermarks ----------------------------------------------------------------------------------------
    def watermark(self, p: int) -> int:
        """The partition's watermark (a very small number before any event)."""
        entry = self.get(watermark_key(p))
        return int(entry["wm"]) if entry else _NO_WATERMARK

    def set_watermark(self, p: int, value: int) -> None:
        """Advance the partition's watermark (never moves back)."""
        if value > self.watermark(p):
            self.put(watermark_key(p), {"wm": value})

    # --- deadline index ------------------------------------------------------------------------------------
    def reset_index(self) -> None:
        """Forget the deadline index (after a rebalance); it is rebuilt from the keys on next use."""
        self._heaps = None
        self._sets = {}

    def feature_sets_of(self, pseudonym: str) -> set[str]:
        """The feature sets of which the participant has had window entries since the index was built (a superset of
        those it has now: erased and finalised windows are not taken out)."""
        self._ensure_index()
        return self._sets.get(pseudonym, set())

    def _ensure_index(self) -> dict[int, list[tuple[int, int, str]]]:
        if self._heaps is None:
            heaps: dict[int, list[tuple[int, int, str]]] = {}
            self._sets = {}
            for key in list(self.mapping.keys()):
                if key.startswith(WINDOW_PREFIX):
                    p, pseudonym, feature_set, kind, start = parse_window_key(key)
                    heaps.setdefault(p, []).append((start + self._deadline_ms[kind], self._rank[feature_set], key))
                    self._sets.setdefault(pseudonym, set()).add(feature_set)
            for heap in heaps.values():
                heapq.heapify(heap)
            self._heaps = heaps
        return self._heaps

    def _index_add(self, key: str) -> None:
        heaps = self._ensure_index()
        p, pseudonym, feature_set, kind, start = parse_window_key(key)
        heapq.heappush(heaps.setdefault(p, []), (start + self._deadline_ms[kind], self._rank[feature_set], key))
        self._sets.setdefault(pseudonym, set()).add(feature_set)

    def pop_due(self, p: int, watermark: int) -> list[str]:
        """Keys of existing window entries of partition p whose deadline is at or before the watermark, ordered by
        deadline, then feature set rank, then key."""
        heap = self._ensure_index().get(p, [])
        due: list[str] = []
        while heap and heap[0][0] <= watermark:
            key = heapq.heappop(heap)[2]
            if self.get(key) is not None:
                due.append(key)
        return due

    # --- erasure -------------------------------------------------------------------------------------------
    def keys_of(self, pseudonym: str) -> Iterator[str]:
        """Every stored or cached key of a participant (any partition)."""
        seen: set[str] = set()
        for key in [*self.mapping.keys(), *self._cache.keys()]:
            if key not in seen and pseudonym_of(key) == pseudonym:
                seen.add(key)
                yield key
