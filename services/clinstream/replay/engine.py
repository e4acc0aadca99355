"""A replay run: the stage's replay adapter driven by the core host's bounded mode, its outputs delivered durably.

The run reads the plan's ranges with assign() under its own group (`clinstream-<site>-replay-<run id>`), so no
live group is joined, rebalanced or moved. The host's checkpoint order holds per batch: the adapter processes;
every output is delivered and waited for (`Delivery`); then, at most every `checkpoint_every_s` (and at the
end, and when asked to stop), the next offsets and the adapter's state are written together atomically (the
run's checkpoint file) and the next offsets are committed to the run's group (so `clinstream lag` shows the
progress). A run killed at any point resumes from its last checkpoint with the same state; batches after it are
processed again and their outputs are idempotent (store upserts by natural key and revision; dead letters are
byte-identical).

Delivery: outputs the adapter names as store outputs (feature records) are written through the store stage's
own sink (`StageSpec.sink`: decode (or take the record an adapter handed over without encoding it), check, one
upsert transaction under the monotonic revision rule and the erasure filter, dead letters for what the checks
refuse), so a replay of months stays out of the live store worker's queue and "written" means committed. Outputs
the adapter names as unpublished are counted only. Every other output is produced (acks=all); dead letters carry a
`clinstream.replay-run` header naming the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REPLAY_RUN, REPLAY_BATCH_MAX, REPLAY_CHECKPOINT_EVERY_S
from clinstream.core.kafka import DurableProducer
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.stage_spec import RecordSink, ReplayAdapter
from clinstream.core.stream_host import BackOff, OffsetRange, produce_outputs, run_bounded
from clinstream.core.topics import Stage, dlq
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.checkpoint import Checkpoint
from clinstream.replay.plan import ReplayPlan

Progress = Callable[[int], None]
_DB_RETRY_S = 120.0


@dataclass(slots=True)
class ReplayOutcome:
    """The final checkpoint and whether the run stopped before its end."""

    checkpoint: Checkpoint
    interrupted: bool


def _add(counters: dict[str, int], more: Mapping[str, int]) -> None:
    for name, n in more.items():
        counters[name] = counters.get(name, 0) + n


class Delivery:
    """Writes a replay batch's outputs durably: store outputs through the store's sink, the rest produced."""

    def __init__(self, settings: Settings, run_id: str, producer: DurableProducer, sink: RecordSink) -> None:
        self.settings = settings
        self.run_id = run_id
        self.producer = producer
        self.sink = sink
        self.dlq_topics = {dlq(s).name(settings.site_id) for s in Stage}
        self.backoff = BackOff(sink.transient, time.sleep, give_up_after_s=_DB_RETRY_S)

    def close(self) -> None:
        """Close the sink's connections (the producer belongs to the caller)."""
        self.sink.close()

    def deliver(self, adapter: ReplayAdapter, result: BatchResult) -> dict[str, int]:
        """Store, count or produce every output; counters of what happened."""
        counts: dict[str, int] = {}
        to_store: list[InRecord] = []
        out: list[OutRecord] = []
        for o in result.out:
            if o.value is None:
                continue
            if o.topic in adapter.store_topics:
                # not read from a topic: no position
                to_store.append(InRecord(o.topic, -1, -1, o.key, o.value, record=o.record))
            elif o.topic in adapter.unpublished_topics:
                _add(counts, {"late_not_republished": 1})
            else:
                out.append(o)
                _add(counts, {"dead_lettered" if o.topic in self.dlq_topics else "produced": 1})
        if to_store:
            stored = self.backoff.run(lambda: self.sink.process(to_store), "feature store write")
            c = stored.counters
            written = c.get("wearable_written", 0) + c.get("sample_written", 0)
            _add(counts, {"feature_records_delivered": c.get("feature_rows", 0), "features_written": written,
                          "features_unchanged": c.get("feature_rows", 0) - written,
                          "dead_lettered": c.get("dead_lettered", 0)})
            out.extend(stored.out)
        produce_outputs(self.producer, [self._marked(o) for o in out], self.settings.produce_timeout_s)
        return counts

    def _marked(self, o: OutRecord) -> OutRecord:
        if o.topic not in self.dlq_topics:
            return o
        return OutRecord(o.topic, o.key, o.value, [*(o.headers or []), (HEADER_REPLAY_RUN, self.run_id.encode())])


class ReplayEngine:
    """Runs one replay plan to its end (or until `stop` is set), checkpointing as it goes."""

    def __init__(self, settings: Settings, plan: ReplayPlan, stage: ReplayAdapter, delivery: Delivery, *,
                 batch_max: int = REPLAY_BATCH_MAX, checkpoint_every_s: float = REPLAY_CHECKPOINT_EVERY_S,
                 max_rate: float | None = None, progress: Progress | None = None,
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.plan = plan
        self.stage = stage
        self.delivery = delivery
        self.batch_max = batch_max
        self.checkpoint_every_s = checkpoint_every_s
        self.max_rate = max_rate
        self.progress = progress or (lambda _n: None)
        self.stop = stop or threading.Event()
        self._mark = time.monotonic()
        self._last_save = time.monotonic()
        self._cp: Checkpoint | None = None

    def run(self, resume: Checkpoint | None = None) -> ReplayOutcome:
        """Replay from the plan's start or from a checkpoint; returns the final checkpoint."""
        if resume is not None and resume.completed:
            return ReplayOutcome(resume, False)
        self._mark = time.monotonic()
        cp = self._cp = resume or Checkpoint(self.plan, {r.tp: r.start for r in self.plan.ranges})
        self.stage.prepare(cp.state)
        nxt = {r.tp: cp.next_offsets.get(r.tp, r.start) for r in self.plan.ranges}
        if resume is None:
            self.save_state(nxt, completed=all(nxt[r.tp] >= r.end for r in self.plan.ranges), force=True)
        started = time.monotonic()
        session = [0]

        def after_batch(records: Sequence[InRecord], _result: BatchResult) -> None:
            if not records:
                return
            session[0] += len(records)
            self.progress(len(records))
            if self.max_rate:
                ahead = session[0] / self.max_rate - (time.monotonic() - started)
                if ahead > 0:
                    self.stop.wait(ahead)

        ranges = [OffsetRange(r.topic, r.partition, r.start, r.end) for r in self.plan.ranges]
        done = run_bounded(self.settings, self.plan.group_id, ranges, nxt, self.stage, self,
                           batch_max=self.batch_max, crash_dir=ckpt.run_dir(self.settings, self.plan.run_id),
                           stop=self.stop, after_batch=after_batch)
        return ReplayOutcome(cp, not done)

    # --- the host's checkpoint steps -----------------------------------------------------------------------
    def deliver(self, records: Sequence[InRecord], result: BatchResult) -> None:
        """Step 2: every output durable; the batch counted."""
        assert self._cp is not None
        _add(self._cp.counters, result.counters)
        _add(self._cp.counters, self.delivery.deliver(self.stage, result))
        if records:
            _add(self._cp.counters, {"records_read": len(records)})

    def save_state(self, nxt: Mapping[str, int], *, completed: bool, force: bool) -> bool:
        """Step 3: offsets, counters and the adapter's state in one atomic file, when due."""
        cp = self._cp
        assert cp is not None
        now = time.monotonic()
        if not force and now - self._last_save < self.checkpoint_every_s:
            return False
        cp.next_offsets = dict(nxt)
        cp.completed = completed
        cp.state = None if completed else self.stage.dump_state()
        cp.elapsed_s += now - self._mark
        self._mark = self._last_save = now
        ckpt.save(self.settings, cp)
        return True


def make_adapter(settings: Settings, stage: str, version: int, participants: Sequence[str]) -> ReplayAdapter:
    """The replay adapter of a stage by name, from its stage spec."""
    from clinstream.core.stage_spec import ReplayRequest
    from clinstream.replay.specs import spec_of

    factory: Any = spec_of(stage).replay
    if factory is None:
        raise ValueError(f"stage {stage!r} cannot be replayed")
    adapter: ReplayAdapter = factory(settings, ReplayRequest(version, tuple(participants)))
    return adapter
