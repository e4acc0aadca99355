"""The one faust-streaming host of every stateful stream stage, with one checkpoint order.

A stage implements `HostedStage` (input topics, a pure `process(batch)` over the state the host hands it, a
report of each batch's counters). The host owns everything faust-specific, once:

* one agent over the stage's input topics, declared with `acks=False`: faust neither tracks nor commits them;
  the `OffsetLedger` admits records per partition only in gap-free offset order from the committed frontier,
  and commits the contiguous processed offsets (faust's own book goes wrong across SIGKILL rebalances);
* the state (`TableState`): one dict per partition, with no faust Table. When partitions are assigned, the host
  reads their changelog from start to end with confluent-kafka (a bounded read) before any record of them is
  processed, and it drops the state of partitions that went. Every write sets the local value and queues the
  changelog record for the partition the stage names; the host produces them itself at the checkpoint. (faust's
  own table recovery handled a record at a time through its consumer: 132 s for 34k records under load.)
* the checkpoint of every batch, in this order (as Kafka Streams and Quix Streams do):
  1. process the batch (state changes in memory);
  2. produce the outputs and await every acknowledgement (acks=all);
  3. produce the state changelog and await it;
  4. commit the input offsets.
  A durable state change therefore implies durable outputs: after a crash, redelivered records meet either the
  old state (and produce the same outputs again) or the new one with their outputs already delivered (so a
  consent withdrawal never loses its erasure request). A failure in steps 2-4 ends the process (exit 70) so
  that a supervisor restarts it from the committed offsets; a crash point (`core.crash_points`, enabled only by
  environment variables in fault tests) can stop it between the steps;
* the fence: when partitions are revoked (inside the group's rebalance, before this member rejoins) and before
  shutdown (before the consumer leaves the group), the host waits for the batch in flight to finish its whole
  checkpoint; later batches wait for the next assignment (and its restore). A partition's new owner restores the
  changelog, then reads the committed offset: a late changelog record or commit of the old owner would make it
  skip input whose state change it never saw (a zombie write; the scale-out fault test lost a rollup block that
  way).

The same module hosts the two other ways a stage's records are consumed, with the same checkpoint order
(`checkpoint_in_order`), so that it is the one place with a consumer loop:

* `SinkHost`, a confluent-kafka group member for a sink stage (the store): no state; the stage's processing
  commits its database transaction, then its outputs (dead letters, audit records) are acknowledged, then the
  input offsets are committed. While the database or broker is away the same batch is retried with back-off
  and the consumer, paused, keeps polling (group membership and rebalance callbacks);
* the bounded mode (`read_range`, `run_bounded`): assign() over explicit [start, end) offsets of a tool's own
  group, never joining a live group. Replay drives a stage's processor through it (outputs, then the run's
  checkpoint of state and offsets), and the tools read topics to their current end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import faust
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, stop_never, wait_exponential

from clinstream.core.config import Settings
from clinstream.core.constants import (
    EXIT_PRODUCE_FAILED,
    LEDGER_WATCH_S,
    REPLAY_IDLE_CHECKS,
    REPLAY_POLL_S,
    RESTORE_TIMEOUT_S,
    STORE_PAUSED_POLL_S,
    STORE_RETRY_MAX_WAIT_S,
    STORE_STATS_EVERY_S,
    WORKER_HEARTBEAT_S,
    WORKER_REBALANCE_TIMEOUT_S,
    WORKER_SESSION_TIMEOUT_S,
)
from clinstream.core.crash_points import CrashPoint, CrashPoints
from clinstream.core.kafka import DurableProducer, Message, make_consumer
from clinstream.core.logging import configure_logging
from clinstream.core.metrics_endpoint import serve_metrics
from clinstream.core.offset_ledger import OffsetLedger, offsets_of
from clinstream.core.records import BatchResult, InRecord, OutRecord, from_kafka_message
from clinstream.core.records import from_faust_event as to_in_record
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

    def get(self, key: bytes) -> bytes | None:
        """The stored value of a key, or None."""
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
    table_name: str  # the faust Table holding its state
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
    """Faust app id and consumer group of a stage."""
    return f"clinstream-{settings.site_id}-{stage}"


def changelog_topic(settings: Settings, stage: str, table_name: str) -> str:
    """The name faust gives the changelog topic of a stage's table."""
    return f"{app_id(settings, stage)}-{table_name}-changelog"


Step = Callable[[], Awaitable[None]]


async def checkpoint_in_order(crash: CrashPoints, counters: Mapping[str, int], outputs: Step, state: Step,
                              offsets: Step) -> None:
    """Steps 2-4 of every checkpoint, after the batch was processed (step 1), with the crash points between them."""
    crash.reached(CrashPoint.AFTER_PROCESS, counters)
    await outputs()  # 2. outputs acknowledged
    crash.reached(CrashPoint.AFTER_OUTPUTS, counters)
    await state()  # 3. state acknowledged
    crash.reached(CrashPoint.AFTER_STATE_BEFORE_ACK, counters)
    await offsets()  # 4. input offsets committed


def checkpoint_in_order_sync(crash: CrashPoints, counters: Mapping[str, int], outputs: Callable[[], None],
                             state: Callable[[], None], offsets: Callable[[], None]) -> None:
    """`checkpoint_in_order` for the blocking steps of the confluent-kafka modes."""
    def step(fn: Callable[[], None]) -> Step:
        async def run_step() -> None:
            fn()
        return run_step

    asyncio.run(checkpoint_in_order(crash, counters, step(outputs), step(state), step(offsets)))


class StreamHost:
    """One stage hosted by faust: the agent, the table, the ledger and the checkpoint."""

    def __init__(self, settings: Settings, stage: HostedStage) -> None:
        self.settings = settings
        self.stage = stage
        traits = stage.traits
        state_dir = settings.state_dir / traits.name
        state_dir.mkdir(parents=True, exist_ok=True)
        self.crash = CrashPoints(state_dir, stage=traits.name)
        group = app_id(settings, traits.name)
        self.app = faust.App(
            group,
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            datadir=str(state_dir),
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.replication_factor,
            topic_disable_leader=True,
            web_enabled=False,
            producer_acks=-1,
            broker_commit_interval=1.0,
            broker_session_timeout=WORKER_SESSION_TIMEOUT_S,  # a SIGKILLed member leaves the group quickly
            broker_heartbeat_interval=WORKER_HEARTBEAT_S,
            broker_rebalance_timeout=WORKER_REBALANCE_TIMEOUT_S,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
        )
        self.changelog = changelog_topic(settings, traits.name, traits.table_name)
        self.state = TableState(traits.changelog_order)
        stage.bind(self.state)
        self._inputs = tuple(stage.input_topics)
        source = self.app.topic(*self._inputs, key_type=bytes, value_type=bytes, key_serializer="raw",
                                value_serializer="raw", acks=False)  # offsets are committed by the ledger
        self.ledger = OffsetLedger(self.app, settings, group, self._inputs)
        self._in_flight = asyncio.Lock()  # held by the batch being checkpointed
        self._ready = asyncio.Event()  # set from an assignment (its state restored) until the next fence
        self._held: set[int] = set()  # the partitions whose state is in memory, complete
        self._restoring: tuple[threading.Event, asyncio.Task[None]] | None = None  # (stop, task) of a restore
        self.restored_records = 0  # changelog records read back since start
        self._wire(source)

    def _wire(self, source: Any) -> None:
        app, traits = self.app, self.stage.traits

        async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            await self.fence()

        async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            assignment: Iterable[Any] = args[0]  # faust sends the whole new assignment (topic partitions)
            await self.on_assigned({tp.partition for tp in assignment if tp.topic in self._inputs})

        async def stopping(sender: Any, /, *args: Any, **kwargs: Any) -> None:
            await self.fence()  # before the consumer leaves the group (faust stops it after this signal)
            self.ledger.close()

        # One receiver per signal (a signal's receivers run in no fixed order), each fencing first.
        app.on_partitions_revoked.connect(revoked)
        app.on_partitions_assigned.connect(assigned)
        app.on_before_shutdown.connect(stopping)

        @app.agent(source, name=f"{traits.name}-host")
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(traits.batch_max, within=traits.batch_within_s):
                await self.run_batch([to_in_record(e) for e in events])

        @app.timer(LEDGER_WATCH_S)  # type: ignore[untyped-decorator]
        async def watch_offsets() -> None:
            if self._ready.is_set():  # during a restore records wait on purpose
                await self.ledger.watch()

        @app.task  # type: ignore[untyped-decorator]
        async def announce() -> None:
            log.info("%s worker for site %s started; group %s", traits.name, self.settings.site_id,
                     app_id(self.settings, traits.name))

    async def run_batch(self, records: Sequence[InRecord]) -> None:
        """Checkpoint one batch once the host is ready; a batch that cannot be made durable ends the process.

        Between a fence and the next assignment the batch waits: then the ledger admits only the records of
        partitions still held, from their committed offsets.
        """
        while True:
            await self._ready.wait()
            async with self._in_flight:
                if not self._ready.is_set():  # fenced while this batch waited for the lock
                    continue
                try:
                    await self.checkpoint(records)
                except Exception as exc:  # not durable: restart from committed offsets, never skip a batch
                    log.critical("batch of %d records failed (%s); exiting so that it is re-processed",
                                 len(records), type(exc).__name__)
                    logging.shutdown()
                    os._exit(EXIT_PRODUCE_FAILED)
                return

    async def on_assigned(self, partitions: set[int]) -> None:
        """A new assignment: keep the state of partitions held, drop the rest, restore new ones, then process.

        A partition kept across the rebalance keeps its state: the fence made every change of it durable, and no
        other member wrote to it meanwhile. New partitions are read back from their changelog in the background
        (this callback returns at once, so the member keeps heartbeating through a long restore); batches wait
        until it is done. A fence cuts a restore short, and the next assignment starts it over.
        """
        await self._end_restore()
        async with self._in_flight:
            self._held &= partitions
            self.state.drop(self.state.partitions() - self._held)  # partitions gone, restores cut short
            self.ledger.forget()
            self.stage.on_assignment_changed()
            new = partitions - self._held
            if not new:
                self._ready.set()
                return
            stop = threading.Event()
            self._restoring = (stop, asyncio.create_task(self._restore_then_process(sorted(new), stop)))

    async def until_ready(self) -> None:
        """Wait until batches are processed again (an assignment, with its new partitions restored)."""
        await self._ready.wait()

    async def _restore_then_process(self, partitions: list[int], stop: threading.Event) -> None:
        started = time.monotonic()
        try:
            count = await asyncio.get_running_loop().run_in_executor(None, self._restore, partitions, stop)
        except Exception as exc:  # the changelog cannot be read: restart and restore again
            log.critical("restore of partitions %s failed (%s); exiting", partitions, type(exc).__name__)
            logging.shutdown()
            os._exit(EXIT_PRODUCE_FAILED)
        async with self._in_flight:
            if stop.is_set():  # a fence came first: the next assignment starts over
                return
            self.restored_records += count
            self._held.update(partitions)
            self.stage.on_assignment_changed()  # indexes rebuilt over the restored keys
            self._ready.set()
        log.info("restored partitions %s from %d changelog records in %.2f s", partitions, count,
                 time.monotonic() - started)

    async def _end_restore(self) -> None:
        """Stop a restore still running (a fence asked it to) and wait until its reading thread is done."""
        if self._restoring is not None:
            stop, task = self._restoring
            self._restoring = None
            stop.set()
            await task

    def _restore(self, partitions: list[int], stop: threading.Event) -> int:
        """Read the changelog of `partitions` from its start to its end into the state (blocking); records read."""
        count = 0
        group = f"{app_id(self.settings, self.stage.traits.name)}-restore"  # assign() only, never committed
        for msg in read_range(self.settings, self.changelog, group, starts=dict.fromkeys(partitions, 0),
                              timeout_s=RESTORE_TIMEOUT_S, stop=stop):
            self.state.apply(msg.partition() or 0, msg.key() or b"", msg.value())
            count += 1
        release_free_memory()  # the read's buffers, freed, would otherwise stay resident
        return count

    async def fence(self) -> None:
        """Let the batch in flight finish its whole checkpoint, then process nothing until the next assignment.

        Called when partitions are revoked (faust awaits it inside the group's rebalance, before this member
        rejoins) and before shutdown (before the consumer leaves the group). So a partition's new owner, which
        restores the changelog and then reads the committed offset, never meets a late changelog record or offset
        commit of this member: a zombie write that lands after the handover would make the new owner skip input
        whose state change it never saw (a block missing from a rollup), or overwrite its newer state.
        """
        if self._restoring is not None:
            self._restoring[0].set()  # a restore in progress stops; the next assignment starts it over
        async with self._in_flight:
            self._ready.clear()

    async def checkpoint(self, records: Sequence[InRecord]) -> None:
        """Process one batch and make it durable in the one order: outputs, state, input offsets."""
        admitted = await self.ledger.admit(records)
        if not admitted:
            return
        started = time.perf_counter()
        self.state.pending.clear()
        result = self.stage.process(admitted)  # 1. state changed in memory

        async def commit_offsets() -> None:
            await self.ledger.processed(offsets_of(admitted))
            await self.ledger.commit()

        await checkpoint_in_order(self.crash, result.counters, lambda: self._produce_outputs(result.out),
                                  lambda: self._produce_changelog(self.state.take_pending()), commit_offsets)
        self.stage.report(result)
        observe_batch(self.stage.traits.name, len(admitted), time.perf_counter() - started, result.counters,
                      result.out)

    async def _produce_outputs(self, out: Sequence[OutRecord]) -> None:
        producer = self.app.producer
        futures = [await producer.send(o.topic, o.key, o.value, None, None, list(o.headers) if o.headers else None)
                   for o in out]
        await asyncio.gather(*futures)

    async def _produce_changelog(self, pending: Sequence[Pending]) -> None:
        producer = self.app.producer
        topic = self.changelog
        futures = [await producer.send(topic, key, value, partition, None, None) for key, value, partition in pending]
        await asyncio.gather(*futures)


def run(settings: Settings, stage: HostedStage) -> None:
    """Host a stage until SIGTERM/SIGINT."""
    configure_logging(stage.traits.name)
    serve_metrics(stage.traits.name)
    host = StreamHost(settings, stage)
    ensure_changelog(settings, host.changelog)
    worker = faust.Worker(host.app, loglevel=logging.getLogger().level, quiet=True, override_logging=False,
                          redirect_stdouts=False)
    worker.execute_from_commandline()


# ---- producing a batch's outputs from the confluent-kafka modes -----------------------------------------------
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


# ---- a sink stage on a confluent-kafka group member (the store) -----------------------------------------------
class SinkStage(Protocol):
    """What a sink stage gives the host: its processing makes the batch's effects durable (a database commit)."""

    traits: StageTraits

    @property
    def input_topics(self) -> Sequence[str]:
        """The topics the stage reads."""

    def start(self) -> None:
        """Prepare (e.g. migrate the database); retried by the host while it fails transiently."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Make the batch's effects durable; the result's outputs (dead letters, audit records) are produced next."""

    def transient(self, exc: BaseException) -> bool:
        """Whether a failure is an outage (retried unchanged) rather than a bug."""

    def report(self, result: BatchResult, records: int, seconds: float) -> None:
        """Count a checkpointed batch (counts only, never keys or values)."""

    def close(self) -> None:
        """Release the stage's connections."""


class SinkHost:
    """A sink stage's consume -> process -> produce -> commit loop as a member of its consumer group."""

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

    def run(self) -> None:
        """Start up, then consume until `stop`; the held batch is never committed on the way out."""
        try:
            self._retrying(self.stage.start, "start-up")
            consumer = make_consumer(self.settings, self.group,
                                     **{"session.timeout.ms": int(WORKER_SESSION_TIMEOUT_S * 1000)})
            self._consumer = consumer
            self._producer = DurableProducer(self.settings)
            topics = list(self.stage.input_topics)
            consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info("%s worker for site %s consuming %d topics as group %s (batch %d / %.0f ms)",
                     self.stage.traits.name, self.settings.site_id, len(topics), self.group, self.batch_max,
                     self.batch_within_s * 1000)
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self.handle(batch)
                self._log_stats()
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
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._revoked |= gone
        before = len(self._carry)
        self._carry = [r for r in self._carry if (r.topic, r.partition) not in gone]
        log.info("revoked %d partitions; dropped %d held records (their new owner re-reads them)", len(gone),
                 before - len(self._carry))

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
        """Process (durable effects), produce the outputs, then commit the input offsets."""
        started = time.perf_counter()
        result = self._retrying(lambda: self.stage.process(self._live(batch)), "processing")
        producer = self._producer
        assert producer is not None
        checkpoint_in_order_sync(
            self.crash, result.counters,
            lambda: self._retrying(lambda: produce_outputs(producer, result.out, self.settings.produce_timeout_s),
                                   "output produce"),
            lambda: None,  # a sink keeps no state between batches
            lambda: self._commit(self._live(batch)))
        for name, n in (("records", len(batch)), ("batches", 1), *result.counters.items()):
            self.stats[name] = self.stats.get(name, 0) + n
        self.stage.report(result, len(batch), time.perf_counter() - started)

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
        except KafkaException as exc:  # e.g. a rebalance: the batch is redelivered and rewritten idempotently
            log.warning("offset commit failed (%s); the batch will be redelivered", exc.args[0] if exc.args else exc)

    def _stats_line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())) or "nothing consumed"

    def _log_stats(self) -> None:
        if time.monotonic() - self._last_stats >= STORE_STATS_EVERY_S:
            self._last_stats = time.monotonic()
            log.info("progress: %s", self._stats_line())


def run_sink(settings: Settings, stage: SinkStage) -> None:
    """Host a sink stage until SIGTERM/SIGINT."""
    configure_logging(stage.traits.name)
    serve_metrics(stage.traits.name)
    host = SinkHost(settings, stage)

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        host.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host.run()


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
        msgs = consumer.consume(batch_max, REPLAY_POLL_S)
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
                ranges.append(OffsetRange(topic, p, start if starts else OFFSET_BEGINNING, hi))
        nxt = {r.tp: r.start for r in ranges}
        for batch in bounded_batches(consumer, ranges, nxt, 10_000, timeout_s=timeout_s, stop=stop):
            yield from batch
    finally:
        consumer.close()


class BoundedStage(Protocol):
    """A stage's processor driven over a bounded range (a replay)."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch (any partitions, offset order per partition)."""


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
    `clinstream lag` shows the progress; a resume uses the saved state). A replay's input topics are neither
    compacted nor transactional, so the reading is `contiguous`: offsets passed without their records are read again.
    """
    crash = CrashPoints(crash_dir if crash_dir is not None else settings.state_dir / "bounded", stage="bounded")
    consumer = tool_consumer(settings, group_id)

    def commit() -> None:
        offsets = [TopicPartition(r.topic, r.partition, nxt[r.tp]) for r in ranges]
        with contextlib.suppress(KafkaException):
            consumer.commit(offsets=offsets, asynchronous=False)

    def one_batch(records: Sequence[InRecord]) -> None:
        result = stage.process(records) if records else BatchResult()
        done = all(nxt[r.tp] >= r.end for r in ranges)
        saved: list[bool] = []
        checkpoint_in_order_sync(crash, result.counters, lambda: checkpoint.deliver(records, result),
                                 lambda: saved.append(checkpoint.save_state(nxt, completed=done, force=done)),
                                 lambda: commit() if saved[0] else None)
        if after_batch is not None:
            after_batch(records, result)

    try:
        for msgs in bounded_batches(consumer, ranges, nxt, batch_max, stop=stop, contiguous=True):
            one_batch([from_kafka_message(m) for m in msgs])
        done = all(nxt[r.tp] >= r.end for r in ranges)
        checkpoint.save_state(nxt, completed=done, force=True)  # done, or asked to stop: remember where we are
        commit()
        return done
    finally:
        consumer.close()
