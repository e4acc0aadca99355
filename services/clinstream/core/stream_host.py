"""The one host of every live stage, on a confluent-kafka consumer-group member, with one checkpoint order.

Every live stage runs in `GroupHost`'s loop: consume a batch, process it, then checkpoint it in this order (as
Kafka Streams and Quix Streams do):
  1. process the batch (a stream stage changes its state in memory; a sink commits its database transaction);
  2. produce the outputs and wait for every acknowledgement (acks=all, idempotent producer);
  3. produce the state changelog and wait for it (stream stages);
  4. commit the input offsets, synchronously.
A durable state change therefore implies durable outputs: after a crash, redelivered records meet either the old
state (and produce the same outputs again) or the new one with their outputs already delivered (so a consent
withdrawal never loses its erasure request). While the broker (or a sink's database) is away, the same step is
retried with back-off and the paused consumer keeps polling to stay in its group; a crash point
(`core.crash_points`, enabled only by environment variables in fault tests) can stop the process between the steps.

The rebalance callbacks run inside the consumer's poll, in the loop's thread, so between checkpoints: a batch in
flight always finishes before its partitions move, and a new owner, which restores the changelog and then reads
the committed offset, never meets a late changelog record or commit of the old owner (a zombie write). The one
exception, a revocation during a back-off, is handled where it happens (`StreamHost._on_revoke`).

* `StreamHost` hosts a stateful stream stage (`HostedStage`: a pure `process(batch)` over the `TableState` the
  host hands it). The state is one dict per partition; when partitions are assigned, the host reads their
  changelog from start to end (a bounded read) before any record of them is processed, and it drops the state
  of partitions that went. Every write sets the local value and queues the changelog record for the partition
  the stage names; the host produces them at step 3.
* `GroupHost` alone hosts a sink stage (`SinkStage`, the store): no state between batches.
* The bounded mode (`read_range`, `run_bounded`): assign() over explicit [start, end) offsets of a tool's own
  group, never joining a live group. Replay drives a stage's processor through it (outputs, then the run's
  checkpoint of state and offsets), and the tools read topics to their current end with it.

Both modes freeze what each batch leaves and collect cyclic garbage once per `FULL_COLLECTION_EVERY_S`
(`core.collector.BatchCollector`), instead of CPython's collection every 700 allocations, which walked each batch's
temporaries several times and a replay's open windows at every full collection.

faust-streaming hosted the stream stages until this host replaced it: its per-message path (aiokafka fetch and
produce, events, the asyncio loop) cost 60-75 % of the pseudonymise and features workers' CPU in the end-to-end
benchmark, and its offset book and table recovery needed workarounds of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, stop_never, wait_exponential

from clinstream.core.collector import BatchCollector, configure_collector
from clinstream.core.config import Settings
from clinstream.core.constants import (
    HOST_FETCH_MIN_BYTES,
    HOST_FETCH_WAIT_MS,
    REPLAY_IDLE_CHECKS,
    REPLAY_POLL_S,
    RESTORE_TIMEOUT_S,
    STORE_PAUSED_POLL_S,
    STORE_RETRY_MAX_WAIT_S,
    STORE_STATS_EVERY_S,
    WORKER_HEARTBEAT_S,
    WORKER_SESSION_TIMEOUT_S,
)
from clinstream.core.crash_points import CrashPoint, CrashPoints
from clinstream.core.kafka import BrokerUnavailable, DurableProducer, Message, make_consumer
from clinstream.core.logging import configure_logging
from clinstream.core.metrics_endpoint import serve_metrics
from clinstream.core.records import BatchResult, InRecord, OutRecord, from_kafka_message
from clinstream.core.stage_metrics import observe_batch
from clinstream.core.topic_admin import ensure_changelog

log = logging.getLogger("clinstream.core.stream_host")

Pending = tuple[bytes, bytes | None, int]  # changelog key, value (None deletes), partition


ChangelogOrder = Callable[[bytes, bytes | None], int]  # rank of a changelog record within a batch (stable)


class TableState:
    """A stage's raw bytes state, one dict per changelog partition; each write is queued for its changelog partition.

    The host restores a partition's dict from its changelog when the partition is assigned and drops it when the
    partition goes. A crash can leave any prefix of a batch's changelog records durable (per partition). A stage
    whose state is only safe under some prefixes gives an `order`: the batch's records are produced sorted by it
    (stably).
    """

    def __init__(self, order: ChangelogOrder | None = None) -> None:
        self._parts: dict[int, dict[bytes, bytes]] = {}
        self._order = order
        self.pending: list[Pending] = []

    def get(self, key: bytes, partition: int | None = None) -> bytes | None:
        """The stored value of a key, or None; given the key's partition, one look-up instead of one per partition."""
        if partition is not None:
            part = self._parts.get(partition)
            return None if part is None else part.get(key)
        for part in self._parts.values():
            value = part.get(key)
            if value is not None:
                return value
        return None

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Set a key now; its changelog record goes to `partition` at the checkpoint."""
        self._parts.setdefault(partition, {})[key] = value
        self.pending.append((key, value, partition))

    def delete(self, key: bytes, partition: int) -> None:
        """Delete a key of `partition` now (KeyError if it has none); its changelog tombstone goes there too."""
        del self._parts.get(partition, {})[key]
        self.pending.append((key, None, partition))

    def __contains__(self, key: bytes) -> bool:
        return any(key in part for part in self._parts.values())

    def snapshot_keys(self) -> Iterator[bytes]:
        """Every stored key (a snapshot)."""
        return iter([key for part in self._parts.values() for key in part])

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def take_pending(self) -> list[Pending]:
        """The queued changelog records in production order (write order, stably sorted by the stage's order)."""
        pending, self.pending = self.pending, []
        if self._order is not None:
            order = self._order
            pending.sort(key=lambda rec: order(rec[0], rec[1]))
        return pending

    # ---- the host's side: restore and drop whole partitions ---------------------------------------------
    def apply(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record read back (a restore): set the key, or delete it for a tombstone."""
        part = self._parts.setdefault(partition, {})
        if value is None:
            part.pop(key, None)
        else:
            part[key] = value

    def partitions(self) -> set[int]:
        """The partitions with state in memory."""
        return set(self._parts)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the state of partitions this instance no longer holds."""
        for partition in partitions:
            self._parts.pop(partition, None)


@dataclass(frozen=True)
class StageTraits:
    """How the host runs a stage."""

    name: str  # the stage name (consumer group `clinstream-<site>-<name>`)
    table_name: str  # the name of its state table (in its changelog topic's name)
    table_help: str
    batch_max: int  # records per batch
    batch_within_s: float  # max wait to fill a batch
    changelog_order: ChangelogOrder | None = None


class HostedStage(Protocol):
    """What a stream stage gives the host."""

    traits: StageTraits

    @property
    def input_topics(self) -> Sequence[str]:
        """The topics the stage reads (same partition count, co-partitioned by participant)."""

    def bind(self, state: TableState) -> None:
        """Receive the host's state (once, before the first batch)."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch (records of each partition in offset order)."""

    def on_assignment_changed(self) -> None:
        """Forget in-memory indexes (the partition assignment changed)."""

    def report(self, result: BatchResult) -> None:
        """Log and count a processed batch (counts only, never keys or values)."""


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def app_id(settings: Settings, stage: str) -> str:
    """The consumer group of a stage."""
    return f"clinstream-{settings.site_id}-{stage}"


def changelog_topic(settings: Settings, stage: str, table_name: str) -> str:
    """The changelog topic of a stage's state table (the name faust gave it, kept for existing sites)."""
    return f"{app_id(settings, stage)}-{table_name}-changelog"


Step = Callable[[], None]


def checkpoint_in_order(crash: CrashPoints, counters: Mapping[str, int], outputs: Step, state: Step,
                        offsets: Step) -> None:
    """Steps 2-4 of every checkpoint, after the batch was processed (step 1), with the crash points between them."""
    crash.reached(CrashPoint.AFTER_PROCESS, counters)
    outputs()  # 2. outputs acknowledged
    crash.reached(CrashPoint.AFTER_OUTPUTS, counters)
    state()  # 3. state acknowledged
    crash.reached(CrashPoint.AFTER_STATE_BEFORE_ACK, counters)
    offsets()  # 4. input offsets committed


# ---- producing a batch's outputs -------------------------------------------------------------------------------
def produce_outputs(producer: DurableProducer, out: Sequence[OutRecord], timeout_s: float) -> None:
    """Produce outputs topic by topic and return once the broker acknowledged all of them (acks=all)."""
    by_topic: dict[str, list[Message]] = {}
    for o in out:
        if o.value is not None:
            by_topic.setdefault(o.topic, []).append((o.key, o.value, o.headers))
    for topic, messages in by_topic.items():
        producer.send(topic, messages, timeout_s)


T = TypeVar("T")


class Stopping(Exception):
    """Shutdown was requested while waiting: leave without committing the held batch."""


class BackOff:
    """Retries a step unchanged with exponential back-off while it fails transiently; `sleep` is the host's wait."""

    def __init__(self, transient: Callable[[BaseException], bool], sleep: Callable[[float], None],
                 give_up_after_s: float | None = None) -> None:
        self._transient = transient
        self._sleep = sleep
        self._stop = stop_never if give_up_after_s is None else stop_after_delay(give_up_after_s)
        self._outage_since: float | None = None

    def _note(self, what: str) -> Callable[[RetryCallState], None]:
        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            name = type(exc).__name__ if exc else "?"
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("%s failed (%s): holding the batch, offsets uncommitted, retrying with back-off",
                            what, name)
            elif state.attempt_number % 10 == 0:
                log.warning("%s still failing after %d attempts (%s)", what, state.attempt_number, name)
        return note

    def run(self, fn: Callable[[], T], what: str) -> T:
        """`fn()`, retried while its failure is transient."""
        retrying = Retrying(retry=retry_if_exception(self._transient), stop=self._stop,
                            wait=wait_exponential(multiplier=0.1, max=STORE_RETRY_MAX_WAIT_S), sleep=self._sleep,
                            before_sleep=self._note(what), reraise=True)
        value = retrying(fn)
        if self._outage_since is not None:
            log.warning("%s succeeded again after %.1f s; catching up", what, time.monotonic() - self._outage_since)
            self._outage_since = None
        return value


# ---- the group host: every live stage as a confluent-kafka consumer-group member ---------------------------------
class SinkStage(Protocol):
    """A stage as the group host drives it. A sink's processing makes the batch's effects durable (a database
    commit); a stream stage's changes its state in memory (the host makes it durable)."""

    traits: StageTraits

    @property
    def input_topics(self) -> Sequence[str]:
        """The topics the stage reads."""

    def start(self) -> None:
        """Prepare (e.g. migrate the database); retried by the host while it fails transiently."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch; the result's outputs are produced next."""

    def transient(self, exc: BaseException) -> bool:
        """Whether a failure is an outage (retried unchanged) rather than a bug."""

    def report(self, result: BatchResult, records: int, seconds: float) -> None:
        """Count a checkpointed batch (counts only, never keys or values)."""

    def close(self) -> None:
        """Release the stage's connections."""


class GroupHost:
    """A stage's consume -> process -> produce -> commit loop as a member of its consumer group.

    Rebalance callbacks run inside the consumer's poll, in this loop's thread, so never while a batch is being
    checkpointed, except during a back-off, when the paused consumer keeps polling to stay in the group: a
    partition revoked then is its new owner's, and the batch's records of it are neither processed further nor
    committed (`_live`).
    """

    def __init__(self, settings: Settings, stage: SinkStage, *, batch_max: int | None = None,
                 batch_within_s: float | None = None) -> None:
        traits = stage.traits
        self.settings = settings
        self.stage = stage
        self.group = app_id(settings, traits.name)
        self.batch_max = batch_max or traits.batch_max
        self.batch_within_s = traits.batch_within_s if batch_within_s is None else batch_within_s
        state_dir = settings.state_dir / traits.name
        state_dir.mkdir(parents=True, exist_ok=True)
        self.crash = CrashPoints(state_dir, stage=traits.name)
        self.stats: dict[str, int] = {}
        self.backoff = BackOff(stage.transient, self._sleep_polling)
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: DurableProducer | None = None
        self._carry: list[InRecord] = []
        self._revoked: set[tuple[str, int]] = set()
        self._paused = False
        self._last_stats = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    def consumer_overrides(self) -> dict[str, Any]:
        """Consumer settings of this host's group member."""
        return {"session.timeout.ms": int(WORKER_SESSION_TIMEOUT_S * 1000),
                "heartbeat.interval.ms": int(WORKER_HEARTBEAT_S * 1000),
                "partition.assignment.strategy": "range",  # co-partitioned topics: a partition number, one member
                "fetch.min.bytes": HOST_FETCH_MIN_BYTES, "fetch.wait.max.ms": HOST_FETCH_WAIT_MS}

    def run(self) -> None:
        """Start up, then consume until `stop`; the held batch is never committed on the way out."""
        try:
            self._retrying(self.stage.start, "start-up")
            consumer = make_consumer(self.settings, self.group, **self.consumer_overrides())
            self._consumer = consumer
            self._producer = DurableProducer(self.settings)
            topics = list(self.stage.input_topics)
            consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("%s worker for site %s started; consuming %d topics as group %s (batch %d / %.0f ms)",
                     self.stage.traits.name, self.settings.site_id, len(topics), self.group, self.batch_max,
                     self.batch_within_s * 1000)
            with BatchCollector() as collector:
                while not self._stop.is_set():
                    batch = self._collect()
                    if batch:
                        self.handle(batch)
                    self._log_stats()
                    collector.after_batch()  # the batch's garbage now, not every 700 allocations during it
        except Stopping:
            log.info("stopping during back-off; the held batch stays uncommitted and will be redelivered")
        finally:
            self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed: %s", type(exc).__name__)
        if self._producer is not None:
            self._producer.close()
        self.stage.close()
        log.info("%s worker stopped: %s", self.stage.traits.name, self._stats_line())

    # ---- consumption ------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        # librdkafka keeps a partition's pause across a revocation and a new assignment: a partition paused by a
        # back-off that a rebalance interrupted would otherwise never be fetched again.
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._revoked |= gone
        before = len(self._carry)
        self._carry = [r for r in self._carry if (r.topic, r.partition) not in gone]
        log.info("revoked %d partitions; dropped %d held records (their new owner re-reads them)", len(gone),
                 before - len(self._carry))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revocation (this member was out of the group)."""
        self._on_revoke(consumer, partitions)

    def _take(self, msgs: Sequence[KafkaMessage]) -> None:
        for msg in msgs:
            err = msg.error()
            if err is not None:
                log.warning("consumer error: %s", err.str() if hasattr(err, "str") else err)
                continue
            self._carry.append(from_kafka_message(msg))

    def _collect(self) -> list[InRecord]:
        """Up to batch_max records, waiting at most batch_within_s after the first one (0.5 s when idle)."""
        assert self._consumer is not None
        if not self._carry:  # idle: `poll` returns with the first record (`consume` would wait out its timeout)
            msg = self._consumer.poll(0.5)
            if msg is None:
                return []
            self._take([msg])
        deadline = time.monotonic() + self.batch_within_s
        while len(self._carry) < self.batch_max and not self._stop.is_set():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            self._take(self._consumer.consume(num_messages=self.batch_max - len(self._carry), timeout=timeout))
        batch, self._carry = self._carry[:self.batch_max], self._carry[self.batch_max:]
        self._revoked.clear()
        return batch

    # ---- back-off that keeps the consumer in its group --------------------------------------------------
    def _sleep_polling(self, seconds: float) -> None:
        """Wait paused: a paused consumer fetches nothing, yet its polls keep it in the group (max.poll.interval)."""
        consumer = self._consumer
        if consumer is None:  # start-up: nothing to keep alive yet
            if self._stop.wait(seconds):
                raise Stopping
            return
        if not self._paused:
            consumer.pause(consumer.assignment())
            self._paused = True
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                raise Stopping
            msg = consumer.poll(min(STORE_PAUSED_POLL_S, left))
            if msg is not None and msg.error() is None:
                self._carry.append(from_kafka_message(msg))  # fetched before the pause took effect: keep it

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        value = self.backoff.run(fn, what)
        if self._paused and self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        return value

    # ---- one batch, in the checkpoint order -------------------------------------------------------------
    def _live(self, batch: Sequence[InRecord]) -> list[InRecord]:
        """The records of partitions still held (a partition revoked during a back-off is its new owner's)."""
        return [r for r in batch if (r.topic, r.partition) not in self._revoked]

    def handle(self, batch: Sequence[InRecord]) -> None:
        """Process, produce the outputs, make the state durable, then commit the input offsets."""
        started = time.perf_counter()
        result = self._retrying(lambda: self.stage.process(self._live(batch)), "processing")
        producer = self._producer
        assert producer is not None
        checkpoint_in_order(
            self.crash, result.counters,
            lambda: self._retrying(lambda: produce_outputs(producer, result.out, self.settings.produce_timeout_s),
                                   "output produce"),
            self._produce_state,
            lambda: self._commit(self._live(batch)))
        for name, n in (("records", len(batch)), ("batches", 1), *result.counters.items()):
            self.stats[name] = self.stats.get(name, 0) + n
        self.stage.report(result, len(batch), time.perf_counter() - started)

    def _produce_state(self) -> None:
        """Step 3: a sink keeps no state between batches (its processing committed its effects)."""

    def _commit(self, records: Sequence[InRecord]) -> None:
        """Synchronously commit the next offset of every partition in the batch."""
        assert self._consumer is not None
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        nxt: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            if key in owned:  # a partition revoked meanwhile is its new owner's to commit
                nxt[key] = max(nxt.get(key, 0), r.offset + 1)
        if not nxt:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: the batch is redelivered and processed again
            log.warning("offset commit failed (%s); the batch will be redelivered", exc.args[0] if exc.args else exc)

    def _stats_line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())) or "nothing consumed"

    def _log_stats(self) -> None:
        if time.monotonic() - self._last_stats >= STORE_STATS_EVERY_S:
            self._last_stats = time.monotonic()
            log.info("progress: %s", self._stats_line())


class _Stateful:
    """A stream stage as the group host drives it: pure processing over state; outages are the broker's."""

    def __init__(self, stage: HostedStage) -> None:
        self.inner = stage
        self.traits = stage.traits

    @property
    def input_topics(self) -> Sequence[str]:
        """The stage's topics."""
        return self.inner.input_topics

    def start(self) -> None:
        """Nothing to prepare."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """The stage's processing (state changes in memory)."""
        return self.inner.process(records)

    def transient(self, exc: BaseException) -> bool:
        """Only the broker's unavailability is retried; a processing error is a bug and ends the process."""
        return isinstance(exc, BrokerUnavailable)

    def report(self, result: BatchResult, records: int, seconds: float) -> None:
        """The stage's report and the host's batch metrics."""
        self.inner.report(result)
        observe_batch(self.traits.name, records, seconds, result.counters, result.out)

    def close(self) -> None:
        """Nothing to release."""


class StreamHost(GroupHost):
    """A stateful stream stage on the group host: its state restored on assignment, its changelog checkpointed.

    * On an assignment the host keeps the state of partitions it held (every change of them is durable: callbacks
      run between checkpoints), drops the rest, and reads the new partitions' changelog from start to end
      (`read_range`) before the next batch. librdkafka heartbeats from its own thread, so a long restore inside
      the callback keeps the member in its group (`max.poll.interval.ms` allows the restore's deadline).
    * A partition revoked while a batch was being checkpointed (during a produce back-off) or lost (this member
      was out of the group) may have state in memory that is not durable: it is dropped, and its changelog
      records of the batch are not produced; its records are re-read from the committed offset.
    """

    def __init__(self, settings: Settings, stage: HostedStage) -> None:
        super().__init__(settings, _Stateful(stage))
        self.hosted = stage
        self.changelog = changelog_topic(settings, stage.traits.name, stage.traits.table_name)
        self.state = TableState(stage.traits.changelog_order)
        stage.bind(self.state)
        self._held: set[int] = set()  # the partitions whose state is in memory and durable
        self._in_flight = False  # a batch is between processing and its commit
        self._unsafe: set[int] = set()  # partitions revoked or lost during the batch in flight
        self.restored_records = 0  # changelog records read back since start

    def consumer_overrides(self) -> dict[str, Any]:
        """The group member may spend a restore's deadline in the assignment callback."""
        return {**super().consumer_overrides(), "max.poll.interval.ms": int((RESTORE_TIMEOUT_S + 60) * 1000)}

    def run(self) -> None:
        """Create the changelog if missing, then run the loop."""
        ensure_changelog(self.settings, self.changelog)
        super().run()

    def handle(self, batch: Sequence[InRecord]) -> None:
        """One batch: state changes in memory, then the checkpoint in the one order."""
        self.state.pending.clear()
        self._unsafe.clear()
        self._in_flight = True
        try:
            super().handle(batch)
        finally:
            self._in_flight = False

    def _produce_state(self) -> None:
        """Step 3: the batch's changelog records, except those of partitions that went during the checkpoint."""
        pending = [rec for rec in self.state.take_pending() if rec[2] not in self._unsafe]
        producer = self._producer
        assert producer is not None
        self._retrying(lambda: producer.send_to_partitions(self.changelog, pending, self.settings.produce_timeout_s),
                       "changelog produce")

    # ---- assignment -------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        self.on_assigned({tp.partition for tp in partitions if tp.topic in self.stage.input_topics})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_revoke(consumer, partitions)
        if self._in_flight:
            self._forget({tp.partition for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_lost(consumer, partitions)
        self._forget({tp.partition for tp in partitions})

    def _forget(self, partitions: set[int]) -> None:
        self._unsafe |= partitions
        self._held -= partitions
        self.state.drop(partitions)

    def on_assigned(self, partitions: set[int]) -> None:
        """Keep the state of partitions held, drop the rest, restore new ones (blocking) from the changelog."""
        self._held &= partitions
        self.state.drop(self.state.partitions() - self._held)
        new = sorted(partitions - self._held)
        if new:
            started = time.monotonic()
            count = self._restore(new)
            if self._stop.is_set():  # cut short by shutdown: nothing of it is processed
                self.state.drop(new)
                return
            self.restored_records += count
            self._held.update(new)
            log.info("restored partitions %s from %d changelog records in %.2f s", new, count,
                     time.monotonic() - started)
        self.hosted.on_assignment_changed()  # indexes rebuilt over the partitions held

    def _restore(self, partitions: list[int]) -> int:
        """Read the changelog of `partitions` from its start to its end into the state; records read."""
        count = 0
        group = f"{self.group}-restore"  # assign() only, never committed
        for msg in read_range(self.settings, self.changelog, group, starts=dict.fromkeys(partitions, 0),
                              timeout_s=RESTORE_TIMEOUT_S, stop=self._stop):
            self.state.apply(msg.partition() or 0, msg.key() or b"", msg.value())
            count += 1
        release_free_memory()  # the read's buffers, freed, would otherwise stay resident
        return count


def _serve(host: GroupHost, name: str) -> None:
    configure_logging(name)
    serve_metrics(name)

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        host.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    configure_collector()
    host.run()


def run(settings: Settings, stage: HostedStage) -> None:
    """Host a stream stage until SIGTERM/SIGINT."""
    _serve(StreamHost(settings, stage), stage.traits.name)


def run_sink(settings: Settings, stage: SinkStage) -> None:
    """Host a sink stage until SIGTERM/SIGINT."""
    _serve(GroupHost(settings, stage), stage.traits.name)


# ---- the bounded mode: [start, end) offset ranges read with assign() under a tool's own group -----------------
_METADATA_TIMEOUT_S = 10.0
REPLAY_READER = "replay-reader"  # `app_id` suffix of the replay tools' one-off reads (assign() only, never committed)


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """One partition's offsets to read: [start, end)."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def tp(self) -> str:
        """`topic/partition`."""
        return f"{self.topic}/{self.partition}"


def tool_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer for assign()-only reading: never subscribes, commits only when told to."""
    return make_consumer(settings, group_id, **{"enable.partition.eof": False, **overrides})


def partitions(consumer: Consumer, topic: str) -> list[int]:
    """Partition numbers of a topic (empty if the topic does not exist)."""
    md = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
    if md is None or md.error is not None:
        return []
    return sorted(md.partitions)


def watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 15.0) -> tuple[int, int]:
    """(low, high) watermark of a partition, retried while leaders are being elected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            return int(lo), int(hi)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def bounded_batches(consumer: Consumer, ranges: Sequence[OffsetRange], nxt: dict[str, int], batch_max: int, *,
                    stop: threading.Event | None = None, timeout_s: float | None = None,
                    contiguous: bool = False) -> Iterator[list[KafkaMessage]]:
    """Batches of the ranges' messages from `nxt` (advanced past each yielded batch) until every range is done.

    A batch may be empty (a poll that found nothing), so a caller can checkpoint on time. Per partition in offset
    order; tombstones included. Partitions are paused when done. Ends early when `stop` is set.

    Offsets a partition's reading passes without a record (a record beyond `nxt`, or the consumer's position past
    the end after idle polls) are gaps of the log when its topic is compacted or transactional. With `contiguous`
    (topics neither compacted nor transactional: every offset of [start, end) holds a record) such a skip is the
    consumer's, not the log's: the partition is read again from `nxt` (a seek), and a skip is accepted only when that
    fresh read confirms it (records deleted by retention), with a warning naming the offsets.
    """
    active = {r.tp: r for r in ranges if nxt.setdefault(r.tp, r.start) < r.end}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if active:
        consumer.assign([TopicPartition(r.topic, r.partition, nxt[tp]) for tp, r in active.items()])
    reread_from: dict[str, int] = {}  # partition -> the `nxt` it was last read again from

    def finish(rng: OffsetRange) -> None:
        nxt[rng.tp] = max(nxt[rng.tp], rng.end)
        if active.pop(rng.tp, None) is not None:
            consumer.pause([TopicPartition(rng.topic, rng.partition)])

    def skip_accepted(rng: OffsetRange, seen: int) -> bool:
        """Whether reading may pass [nxt, seen) without records; if not, the partition is read again from nxt."""
        first = nxt[rng.tp]
        if not contiguous:
            return True
        if reread_from.get(rng.tp) == first:
            log.warning("%s: offsets %d..%d hold no records after a fresh read (retention?); passed", rng.tp,
                        first, seen - 1)
            return True
        reread_from[rng.tp] = first
        log.warning("%s: the consumer passed offsets %d..%d without their records; reading again from %d", rng.tp,
                    first, seen - 1, first)
        consumer.seek(TopicPartition(rng.topic, rng.partition, first))
        return False

    idle = 0
    while active and not (stop is not None and stop.is_set()):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"reading did not reach the end of {sorted(active)} in {timeout_s:.0f} s")
        # consume() waits until it has as many records as asked or the poll times out: never ask for more than the
        # active ranges hold, or the last batch of every run waits out the whole poll for records that cannot come
        left = sum(r.end - nxt[tp] for tp, r in active.items())
        msgs = consumer.consume(max(1, min(batch_max, left)), REPLAY_POLL_S)
        batch: list[KafkaMessage] = []
        stale: set[str] = set()  # partitions read again from nxt: the rest of this poll's records are stale
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            tp = f"{msg.topic()}/{msg.partition()}"
            rng = active.get(tp)
            offset = msg.offset() or 0
            if rng is None or tp in stale or offset < nxt[tp]:
                continue
            if offset > nxt[tp] and not skip_accepted(rng, min(offset, rng.end)):
                stale.add(tp)
                continue
            if offset >= rng.end:
                finish(rng)
                continue
            batch.append(msg)
            nxt[tp] = offset + 1
            if nxt[tp] >= rng.end:
                finish(rng)
        idle = 0 if msgs else idle + 1
        if idle >= REPLAY_IDLE_CHECKS and active:  # compaction, control records: trust the position
            for pos in consumer.position([TopicPartition(r.topic, r.partition) for r in active.values()]):
                rng = active.get(f"{pos.topic}/{pos.partition}")
                if rng is not None and pos.offset >= rng.end and skip_accepted(rng, rng.end):
                    finish(rng)
        yield batch


def read_range(settings: Settings, topic: str, group_id: str, *, starts: dict[int, int] | None = None,
               timeout_s: float = 120.0, stop: threading.Event | None = None) -> Iterator[KafkaMessage]:
    """Every message of a topic from `starts` (only those partitions; default: all, from the log start) up to the
    high watermarks of now. Per partition in offset order; tombstones (value None) included. Commits nothing.
    Ends early once `stop` is set."""
    consumer = tool_consumer(settings, group_id)
    try:
        ranges: list[OffsetRange] = []
        for p in partitions(consumer, topic):
            if starts is not None and p not in starts:
                continue
            lo, hi = watermarks(consumer, topic, p)
            start = max(lo, (starts or {}).get(p, lo))
            if hi > start:
                ranges.append(OffsetRange(topic, p, start, hi))  # a real offset: what is left is known
        nxt = {r.tp: r.start for r in ranges}
        for batch in bounded_batches(consumer, ranges, nxt, 10_000, timeout_s=timeout_s, stop=stop):
            yield from batch
    finally:
        consumer.close()


class BoundedStage(Protocol):
    """A stage's processor driven over a bounded range (a replay)."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch (any partitions, offset order per partition)."""

    def finish(self) -> Iterable[BatchResult]:
        """The outputs held back until the end of the range, in chunks (delivered after its last batch, one
        delivery each, so that memory and a store transaction hold one chunk at most)."""


class BoundedCheckpoint(Protocol):
    """Where a bounded run's outputs go and how its state and next offsets are made durable."""

    def deliver(self, records: Sequence[InRecord], result: BatchResult) -> None:
        """Store or produce every output of the batch; return once all are durable."""

    def save_state(self, nxt: Mapping[str, int], *, completed: bool, force: bool) -> bool:
        """Make the state and the next offsets durable together if due (always if `force`); whether it did."""


def run_bounded(settings: Settings, group_id: str, ranges: Sequence[OffsetRange], nxt: dict[str, int],
                stage: BoundedStage, checkpoint: BoundedCheckpoint, *, batch_max: int, crash_dir: Path | None = None,
                stop: threading.Event | None = None,
                after_batch: Callable[[Sequence[InRecord], BatchResult], None] | None = None) -> bool:
    """Drive a stage over [nxt, end) of each range in the host's checkpoint order; whether every range was done.

    Per batch: process; deliver the outputs and wait for them; then, when due (and at the end, and when asked
    to stop), the state with the next offsets; then those offsets are committed to the run's group (informational:
    `clinstream lag` shows the progress; a resume uses the saved state). The batch that completes every range also
    delivers what the stage held back (`finish`, a delivery per chunk) before the completed state is saved, so a run
    killed before that save redoes the end from its last checkpoint. A replay's input topics are neither
    compacted nor transactional, so the reading is `contiguous`: offsets passed without their records are read again.
    """
    crash = CrashPoints(crash_dir if crash_dir is not None else settings.state_dir / "bounded", stage="bounded")
    consumer = tool_consumer(settings, group_id)

    def commit() -> None:
        offsets = [TopicPartition(r.topic, r.partition, nxt[r.tp]) for r in ranges]
        with contextlib.suppress(KafkaException):
            consumer.commit(offsets=offsets, asynchronous=False)

    finished = [False]

    def one_batch(records: Sequence[InRecord]) -> None:
        result = stage.process(records) if records else BatchResult()
        done = all(nxt[r.tp] >= r.end for r in ranges)

        def deliver() -> None:
            checkpoint.deliver(records, result)
            if done:  # then what the stage held back, chunk by chunk, before the completed state is saved
                for held in stage.finish():
                    checkpoint.deliver((), held)
                    for name, n in held.counters.items():
                        result.count(name, n)  # the crash points after the outputs see them
                finished[0] = True

        saved: list[bool] = []
        checkpoint_in_order(crash, result.counters, deliver,
                                 lambda: saved.append(checkpoint.save_state(nxt, completed=done, force=done)),
                                 lambda: commit() if saved[0] else None)
        if after_batch is not None:
            after_batch(records, result)
        collector.after_batch()

    try:
        with BatchCollector() as collector:  # batches frozen, garbage collected when due, not every 700 allocations
            for msgs in bounded_batches(consumer, ranges, nxt, batch_max, stop=stop, contiguous=True):
                one_batch([from_kafka_message(m) for m in msgs])
            done = all(nxt[r.tp] >= r.end for r in ranges)
            if done and not finished[0]:  # nothing left to read (an empty range, or resumed at its end)
                one_batch([])
        checkpoint.save_state(nxt, completed=done, force=True)  # done, or asked to stop: remember where we are
        commit()
        return done
    finally:
        consumer.close()
