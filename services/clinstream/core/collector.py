"""Sets CPython's cyclic garbage collector up for clinstream's long-running processes (workers, replays, gateway)."""

from __future__ import annotations

import gc
import time
from types import TracebackType

from clinstream.core.constants import FULL_COLLECTION_EVERY_S, GC_THRESHOLDS


def configure_collector() -> None:
    """Collect once, freeze what survives (the start-up heap is never walked again) and make full collections rare.

    A full collection walks every tracked object, so its cost grows with what a process holds: the modules it
    imported and, in a replay, every open window's entry. With CPython's default thresholds a 1-hour replay of
    1,000 participants spent about a sixth of its CPU there. Objects frozen here stay reachable until the process
    ends (they are what start-up made: modules, settings, the app); the collection before freezing keeps garbage out
    of the permanent generation. Young cycles are still collected as before; cycles that outlive generation 1 wait
    for the rarer full collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class BatchCollector:
    """Cyclic garbage collected once per `full_every_s` while a stream host (live or bounded) runs its batches, not
    every 700 allocations.

    Inside the `with` block CPython's automatic collection is off. `after_batch` freezes what the batch left, so no
    later collection walks it until a full pass is due; once per `full_every_s` the frozen objects are unfrozen and
    everything is collected, then frozen again: a cycle that became garbage (during a batch, or later) is freed within
    that time. Acyclic garbage is freed by reference counting at once, frozen or not. Automatic collection walked a
    batch's temporaries two or three times before they died and every long-lived object at each full collection: a
    fifth of a 4-hour replay's CPU, whose late-data horizon keeps hours of windows open as Python objects, and about
    a tenth of the feature processor's in its harness. Collecting after every batch instead still cost 14 ms per
    replay batch for about 17 garbage objects (scripts/bench_replay.py, 6 hours of 1,000 participants), and leaving
    the block by a full collection walked a replay's whole state once more as it ended (3 % of a 1-hour replay).
    So leaving the block collects nothing: a process that had frozen objects before (`configure_collector`; it is
    about to end: a replay, a worker's shutdown) keeps what the block froze frozen, with at most one interval's
    garbage cycles in it; any other process gets its objects unfrozen for its automatic collection. Automatic
    collection is restored as found.
    """

    def __init__(self, full_every_s: float = FULL_COLLECTION_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()
        self._was_enabled = True
        self._was_frozen = False

    def __enter__(self) -> BatchCollector:
        self._was_enabled = gc.isenabled()
        self._was_frozen = gc.get_freeze_count() > 0
        gc.disable()
        self._last_full = time.monotonic()
        return self

    def after_batch(self) -> None:
        """Freeze what the batch left; when a full pass is due, first unfreeze and collect everything."""
        now = time.monotonic()
        if now - self._last_full >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
        gc.freeze()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._was_frozen:  # nothing was frozen before the block: nothing is after it
            gc.unfreeze()
        if self._was_enabled:
            gc.enable()
