"""Input offsets of a faust agent, committed by us: contiguous from the group's commit, after durable outputs.

faust-streaming 0.15 keeps its own acknowledgement book (`Consumer._acked`) and commits from it. Across the
rebalances that follow a SIGKILL, that book was measured to go wrong in two ways: offsets acknowledged twice make
the commit crawl one offset per commit interval, and messages that the stream skips (stale generation, or
dropped after a re-seek) are never acknowledged, so the commit stalls for good. Neither loses output, but the
lag never reaches zero and a later restart re-reads everything after the stall.

So the workers' source topics are declared with `acks=False` (faust neither tracks nor commits them) and the
worker host reports each batch here once its outputs are durable:

* per topic-partition, the frontier starts at the group's committed offset (or the log start) and advances only
  over offsets that were processed, in any order and with any duplicates (`Frontier`, pure logic);
* `commit()` sends the advanced frontiers through faust's consumer (the group member), so an offset is never
  committed before every earlier offset's output was durably produced;
* `admit()` lets through, per partition, only the contiguous run of offsets that starts exactly at the frontier:
  offsets below it were already made durable (dropped), and a record beyond a gap is never processed ahead of
  the records before it; the partition is sought back to the frontier at once. faust drops fetched records
  (stale generation after a rebalance, flow control suspended) while delivering later ones of the same
  partition; processing those first let later event times advance the features watermark, so that the
  skipped blocks, redelivered only after `stall_s`, were judged late and lost from their windows;
* `watch()` (a timer) finds partitions whose frontier has not moved for `stall_s` while records wait beyond it,
  and seeks them back to the frontier: whatever faust skipped is delivered again.

A rebalance forgets every frontier (`forget`, called by the host); they are read again from the broker when next
needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaException, TopicPartition

from clinstream.core.config import Settings
from clinstream.core.constants import HOST_SEEK_EVERY_S, LEDGER_STALL_S

log = logging.getLogger("clinstream.core.offset_ledger")

Key = tuple[str, int]  # (topic, partition)


class Positioned(Protocol):
    """A record with its source position."""

    @property
    def topic(self) -> str:
        """Source topic."""

    @property
    def partition(self) -> int:
        """Source partition."""

    @property
    def offset(self) -> int:
        """Offset in the source partition."""


R = TypeVar("R", bound=Positioned)


def contiguous_run(records: Sequence[R], next_offset: int) -> tuple[list[R], bool]:
    """The records (by offset, one per offset) that continue exactly from `next_offset`; and whether a gap cut it."""
    run: list[R] = []
    expected = next_offset
    for rec in sorted(records, key=lambda r: r.offset):
        if rec.offset < expected:
            continue  # processed already (or a duplicate within the batch)
        if rec.offset > expected:
            return run, True
        run.append(rec)
        expected += 1
    return run, False


@dataclass
class Frontier:
    """The next offset to commit for one partition: every offset below it was processed (or already committed)."""

    next_offset: int
    done: set[int] = field(default_factory=set)
    moved_at: float = field(default_factory=time.monotonic)

    def add(self, offsets: Iterable[int]) -> bool:
        """Record processed offsets; returns whether the frontier moved."""
        start = self.next_offset
        self.done.update(o for o in offsets if o >= start)
        nxt = start
        while nxt in self.done:
            self.done.discard(nxt)
            nxt += 1
        if nxt != start:
            self.next_offset = nxt
            self.moved_at = time.monotonic()
            return True
        return False

    def skip_to(self, offset: int) -> None:
        """Move past offsets that no longer exist (the log start moved beyond the frontier)."""
        if offset > self.next_offset:
            self.done = {o for o in self.done if o >= offset}
            self.next_offset = offset
            self.add(())
            self.moved_at = time.monotonic()


async def seek_in_consumer_thread(consumer: Any, tp: Any, offset: int) -> None:
    """Seek a faust consumer's partition from the thread that fetches its records.

    faust-streaming 0.15's `Consumer.seek` calls aiokafka's `seek` from the caller's thread, which pops the
    partition's buffered records while the consumer thread drains them: a race that crashed a features worker with
    `KeyError` in aiokafka's `Fetcher.fetched_records`. Done in the consumer thread (as faust does its own
    `seek_to_committed`), then faust's read offset is reset as its `seek` does.
    """
    thread = getattr(consumer, "_thread", None)
    if thread is None or not hasattr(thread, "call_thread"):
        await consumer.seek(tp, offset)
        return
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None


class OffsetLedger:
    """Commits a faust agent's input offsets from processed batches; re-seeks partitions faust left behind."""

    def __init__(self, app: Any, settings: Settings, group_id: str, topics: Sequence[str],
                 stall_s: float = LEDGER_STALL_S) -> None:
        self._app = app
        self._topics = frozenset(topics)
        self._stall_s = stall_s
        self._frontiers: dict[Key, Frontier] = {}
        self._pending: dict[Key, set[int]] = {}  # processed before the partition's frontier could be read
        self._dirty: set[Key] = set()
        self._rewind: dict[Key, float] = {}  # partitions to seek back to their frontier, with the last seek time
        self._lookup = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
                                 "enable.auto.commit": False, "client.id": f"{group_id}-offset-lookup"})

    def forget(self) -> None:
        """Forget every frontier (the assignment changed; the host calls this after draining its batch)."""
        self._frontiers.clear()
        self._pending.clear()
        self._dirty.clear()
        self._rewind.clear()

    def _assigned(self) -> set[Key]:
        return {(tp.topic, tp.partition) for tp in self._app.consumer.assignment() if tp.topic in self._topics}

    def _start_offsets(self, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        """(first offset to process, high watermark) per partition, read from the broker (blocking)."""
        committed = self._lookup.committed([TopicPartition(t, p) for t, p in keys], timeout=10)
        out: dict[Key, tuple[int, int]] = {}
        for tp in committed:
            if tp.error is not None:  # e.g. the coordinator is loading: not "no commit", so read again later
                raise KafkaException(tp.error)
            low, high = self._lookup.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            out[(tp.topic, tp.partition)] = (max(tp.offset, low) if tp.offset >= 0 else low, high)
        return out

    async def _ensure(self, keys: Iterable[Key]) -> dict[Key, int]:
        """Frontiers for the keys (reading the broker for unknown ones); returns the high watermarks read.

        While the broker cannot be read (it is restarting), nothing is created: the processed offsets of those
        partitions wait in `_pending`, and the next batch or watch tick tries again.
        """
        missing = sorted(k for k in set(keys) if k not in self._frontiers)
        if not missing:
            return {}
        try:
            starts = await asyncio.get_running_loop().run_in_executor(None, self._start_offsets, missing)
        except KafkaException as exc:
            log.warning("committed offsets unreadable (%s); retrying later", exc.args[0].name() if exc.args else exc)
            return {}
        for key, (start, _high) in starts.items():
            frontier = self._frontiers.setdefault(key, Frontier(start))
            if frontier.add(self._pending.pop(key, ())):
                self._dirty.add(key)
        return {k: high for k, (_s, high) in starts.items()}

    async def admit(self, records: Sequence[R]) -> list[R]:
        """The records that may be processed now, in their given order: per partition, the gap-free run from the
        frontier. Partitions cut by a gap (or whose frontier cannot be read yet) are sought back to the frontier."""
        by_key: dict[Key, list[R]] = {}
        for rec in records:
            by_key.setdefault((rec.topic, rec.partition), []).append(rec)
        assigned = self._assigned()
        await self._ensure(k for k in by_key if k in assigned)
        admitted: set[int] = set()
        for key, recs in by_key.items():
            frontier = self._frontiers.get(key)
            if frontier is None:  # not ours any more, or the broker is away: nothing of it is processed now
                if key in assigned:
                    self._rewind.setdefault(key, 0.0)
                continue
            run, gap = contiguous_run(recs, frontier.next_offset)
            admitted.update(id(r) for r in run)
            if gap:
                await self._seek_back(key, frontier.next_offset + len(run))
        return [r for r in records if id(r) in admitted]

    async def _seek_back(self, key: Key, offset: int) -> None:
        from faust.types import TP

        now = time.monotonic()
        if now - self._rewind.get(key, 0.0) < HOST_SEEK_EVERY_S:
            return
        self._rewind[key] = now
        log.info("partition %s/%d: offset gap after %d; seeking back", key[0], key[1], offset)
        try:
            await seek_in_consumer_thread(self._app.consumer, TP(*key), offset)
        except Exception as exc:  # e.g. revoked meanwhile: the watch tries again
            log.warning("seek of %s/%d failed (%s); the watch tries again", key[0], key[1], type(exc).__name__)

    async def processed(self, offsets: dict[Key, list[int]]) -> None:
        """Record a batch whose outputs are durable: offsets per (topic, partition)."""
        assigned = self._assigned()
        await self._ensure(k for k in offsets if k in assigned)
        for key, offs in offsets.items():
            frontier = self._frontiers.get(key)
            if frontier is not None:
                if frontier.add(offs):
                    self._dirty.add(key)
            elif key in assigned:
                self._pending.setdefault(key, set()).update(offs)

    async def commit(self) -> None:
        """Commit every frontier that moved (only for partitions this member holds)."""
        from faust.types import TP

        assigned = self._assigned()
        offsets = {TP(t, p): self._frontiers[(t, p)].next_offset for t, p in self._dirty if (t, p) in assigned}
        self._dirty.clear()
        if offsets and not await self._app.consumer._commit(offsets):
            log.info("offset commit refused during a rebalance; the next batch commits again")

    async def watch(self) -> None:
        """Seek partitions whose frontier is stuck while records wait beyond it back to the frontier."""
        from faust.types import TP

        assigned = sorted(self._assigned())
        if not assigned:
            return
        highs = await self._ensure(assigned)
        unknown = [k for k in assigned if k not in highs]
        if unknown:
            try:
                highs.update(await asyncio.get_running_loop().run_in_executor(None, self._highs, unknown))
            except KafkaException as exc:  # the broker is away: look again at the next tick
                log.info("end offsets unreadable (%s); watching again later",
                         exc.args[0].name() if exc.args else exc)
                return
        now = time.monotonic()
        for key in assigned:
            frontier = self._frontiers.get(key)
            if frontier is None or frontier.next_offset >= highs.get(key, 0):
                continue
            if now - frontier.moved_at < self._stall_s and self._rewind.get(key) != 0.0:
                continue
            log.warning("partition %s/%d: no progress for %.0f s at offset %d (end %d); seeking back",
                        key[0], key[1], now - frontier.moved_at, frontier.next_offset, highs[key])
            frontier.moved_at = now
            self._rewind[key] = now
            try:
                await seek_in_consumer_thread(self._app.consumer, TP(*key), frontier.next_offset)
            except Exception as exc:  # e.g. revoked meanwhile: a watchdog never stops the worker
                log.warning("seek of %s/%d failed (%s); the next tick tries again", key[0], key[1],
                            type(exc).__name__)

    def _highs(self, keys: Sequence[Key]) -> dict[Key, int]:
        out: dict[Key, int] = {}
        for topic, partition in keys:
            low, high = self._lookup.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            frontier = self._frontiers.get((topic, partition))
            if frontier is not None:
                frontier.skip_to(low)  # retention removed records below the frontier
            out[(topic, partition)] = high
        return out

    def close(self) -> None:
        """Close the lookup consumer."""
        self._lookup.close()


def offsets_of(records: Iterable[Any]) -> dict[Key, list[int]]:
    """Offsets per (topic, partition) of records with `topic`, `partition` and `offset` attributes."""
    out: dict[Key, list[int]] = {}
    for r in records:
        out.setdefault((r.topic, r.partition), []).append(r.offset)
    return out
