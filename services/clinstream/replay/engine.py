"""The replay loop: read the plan's ranges with assign(), process in batches, deliver, checkpoint, resume.

The consumer belongs to the run's own group (`clinstream-<site>-replay-<run id>`) and never subscribes, so no
live group is joined, rebalanced or moved. Per batch: records beyond a range's end are ignored, the stage's
processor runs, the sink stores or produces every output and waits for it; only then do the next offsets
count as done. At most every `checkpoint_every_s` (and at the end, and when asked to stop) the offsets and the
processor's state are written together atomically, and the next offsets are also committed to the run's
group (so `clinstream lag` shows the replay's progress). A run killed at any point resumes from its last
checkpoint with the same state; batches after it are processed again and their outputs are idempotent
(store upserts by natural key and revision; dead letters are byte-identical).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from clinstream.core.config import Settings
from clinstream.core.constants import REPLAY_BATCH_MAX, REPLAY_CHECKPOINT_EVERY_S, REPLAY_IDLE_CHECKS, REPLAY_POLL_S
from clinstream.core.records import InRecord, from_kafka_message
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.checkpoint import Checkpoint
from clinstream.replay.kafka_io import tool_consumer
from clinstream.replay.plan import PartitionRange, ReplayPlan
from clinstream.replay.sink import ReplaySink
from clinstream.replay.stages import ReplayStage

Progress = Callable[[int], None]


@dataclass(slots=True)
class ReplayOutcome:
    """The final checkpoint and whether the run stopped before its end."""

    checkpoint: Checkpoint
    interrupted: bool


def _add(counters: dict[str, int], more: dict[str, int]) -> None:
    for name, n in more.items():
        counters[name] = counters.get(name, 0) + n


class ReplayEngine:
    """Runs one replay plan to its end (or until `stop` is set), checkpointing as it goes."""

    def __init__(self, settings: Settings, plan: ReplayPlan, stage: ReplayStage, sink: ReplaySink, *,
                 batch_max: int = REPLAY_BATCH_MAX, checkpoint_every_s: float = REPLAY_CHECKPOINT_EVERY_S,
                 max_rate: float | None = None, progress: Progress | None = None,
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.plan = plan
        self.stage = stage
        self.sink = sink
        self.batch_max = batch_max
        self.checkpoint_every_s = checkpoint_every_s
        self.max_rate = max_rate
        self.progress = progress or (lambda _n: None)
        self.stop = stop or threading.Event()
        self._ranges = {r.tp: r for r in plan.ranges}
        self._mark = time.monotonic()

    def run(self, resume: Checkpoint | None = None) -> ReplayOutcome:
        """Replay from the plan's start or from a checkpoint; returns the final checkpoint."""
        if resume is not None and resume.completed:
            return ReplayOutcome(resume, False)
        self._mark = time.monotonic()
        cp = resume or Checkpoint(self.plan, {tp: r.start for tp, r in self._ranges.items()})
        self.stage.prepare(cp.state)
        nxt = {tp: cp.next_offsets.get(tp, r.start) for tp, r in self._ranges.items()}
        active = {tp: r for tp, r in self._ranges.items() if nxt[tp] < r.end}
        if resume is None:
            self._save(cp, nxt, completed=not active)
        consumer = tool_consumer(self.settings, self.plan.group_id)
        rate_t0 = last_checkpoint = time.monotonic()
        session_records = idle = 0
        try:
            if active:
                consumer.assign([TopicPartition(r.topic, r.partition, nxt[tp]) for tp, r in active.items()])
            while active and not self.stop.is_set():
                msgs = consumer.consume(self.batch_max, REPLAY_POLL_S)
                records: list[InRecord] = []
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue
                    tp = f"{msg.topic()}/{msg.partition()}"
                    rng = active.get(tp)
                    offset = msg.offset() or 0
                    if rng is None or offset < nxt[tp]:
                        continue
                    if offset >= rng.end:
                        self._finish(consumer, active, rng)
                        continue
                    records.append(from_kafka_message(msg))
                    nxt[tp] = offset + 1
                    if nxt[tp] >= rng.end:
                        self._finish(consumer, active, rng)
                idle = 0 if msgs else idle + 1
                if idle >= REPLAY_IDLE_CHECKS:  # gaps (compaction, control records) at a range's end
                    self._finish_by_position(consumer, active, nxt)
                if records:
                    result = self.stage.process(records)
                    _add(cp.counters, result.counters)
                    _add(cp.counters, self.sink.deliver(result))
                    _add(cp.counters, {"records_read": len(records)})
                    session_records += len(records)
                    self.progress(len(records))
                if not active or time.monotonic() - last_checkpoint >= self.checkpoint_every_s:
                    self._save(cp, nxt, completed=not active)
                    self._commit(consumer, nxt)
                    last_checkpoint = time.monotonic()
                if self.max_rate and records:
                    ahead = session_records / self.max_rate - (time.monotonic() - rate_t0)
                    if ahead > 0:
                        self.stop.wait(ahead)
            if active:  # asked to stop: everything delivered so far is durable, remember where we are
                self._save(cp, nxt, completed=False)
                self._commit(consumer, nxt)
            return ReplayOutcome(cp, bool(active))
        finally:
            consumer.close()

    # --- helpers -------------------------------------------------------------------------------------------
    def _save(self, cp: Checkpoint, nxt: dict[str, int], *, completed: bool) -> None:
        now = time.monotonic()
        cp.next_offsets = dict(nxt)
        cp.completed = completed
        cp.state = None if completed else self.stage.dump_state()
        cp.elapsed_s += now - self._mark
        self._mark = now
        ckpt.save(self.settings, cp)

    @staticmethod
    def _finish(consumer: Consumer, active: dict[str, PartitionRange], rng: PartitionRange) -> None:
        if active.pop(rng.tp, None) is not None:
            consumer.pause([TopicPartition(rng.topic, rng.partition)])

    def _finish_by_position(self, consumer: Consumer, active: dict[str, PartitionRange],
                            nxt: dict[str, int]) -> None:
        for tp in consumer.position([TopicPartition(r.topic, r.partition) for r in active.values()]):
            rng = active.get(f"{tp.topic}/{tp.partition}")
            if rng is not None and tp.offset >= rng.end:
                nxt[rng.tp] = rng.end
                self._finish(consumer, active, rng)

    def _commit(self, consumer: Consumer, nxt: dict[str, int]) -> None:
        offsets = [TopicPartition(r.topic, r.partition, nxt[tp]) for tp, r in self._ranges.items()]
        with contextlib.suppress(KafkaException):  # informational only: a resume uses the checkpoint file
            consumer.commit(offsets=offsets, asynchronous=False)
