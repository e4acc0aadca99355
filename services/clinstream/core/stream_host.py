"""The one faust-streaming host of every stateful stream stage, with one checkpoint order.

A stage implements `HostedStage` (input topics, a pure `process(batch)` over the state the host hands it, a
report of each batch's counters). The host owns everything faust-specific, once:

* one agent over the stage's input topics, declared with `acks=False`: faust neither tracks nor commits them;
  the `OffsetLedger` admits records per partition only in gap-free offset order from the committed frontier,
  and commits the contiguous processed offsets (faust's own book goes wrong across SIGKILL rebalances);
* one faust Table (memory store, rebuilt from its changelog on start) written through `TableState`, which sets
  the local value and queues the changelog record for the partition the stage names (faust's `table[k] = v`
  uses the "current event", which is unset inside a batch);
* the checkpoint of every batch, in this order (as Kafka Streams and Quix Streams do):
  1. process the batch (state changes in memory);
  2. produce the outputs and await every acknowledgement (acks=all);
  3. produce the state changelog and await it;
  4. commit the input offsets.
  A durable state change therefore implies durable outputs: after a crash, redelivered records meet either the
  old state (and produce the same outputs again) or the new one with their outputs already delivered (so a
  consent withdrawal never loses its erasure request). A failure in steps 2-4 ends the process (exit 70) so
  that a supervisor restarts it from the committed offsets; a crash point (`core.crash_points`, enabled only by
  environment variables in fault tests) can stop it between the steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faust

from clinstream.core.config import Settings
from clinstream.core.constants import (
    EXIT_PRODUCE_FAILED,
    LEDGER_WATCH_S,
    WORKER_HEARTBEAT_S,
    WORKER_REBALANCE_TIMEOUT_S,
    WORKER_SESSION_TIMEOUT_S,
)
from clinstream.core.crash_points import CrashPoint, CrashPoints
from clinstream.core.logging import configure_logging
from clinstream.core.metrics_endpoint import serve_metrics
from clinstream.core.offset_ledger import OffsetLedger, offsets_of
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.records import from_faust_event as to_in_record
from clinstream.core.stage_metrics import observe_batch

log = logging.getLogger("clinstream.core.stream_host")

Pending = tuple[bytes, bytes | None, int]  # changelog key, value (None deletes), partition


ChangelogOrder = Callable[[bytes, bytes | None], int]  # rank of a changelog record within a batch (stable)


class TableState:
    """Raw bytes state over a faust Table's store; each write is queued for the changelog partition given.

    A crash can leave any prefix of a batch's changelog records durable (per partition). A stage whose state is
    only safe under some prefixes gives an `order`: the batch's records are produced sorted by it (stably).
    """

    def __init__(self, table: Any, order: ChangelogOrder | None = None) -> None:
        self._table = table
        self._order = order
        self.pending: list[Pending] = []

    def get(self, key: bytes) -> bytes | None:
        """The stored value of a key, or None."""
        value: bytes | None = self._table.data.get(key)
        return value

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Set a key now; its changelog record goes to `partition` at the checkpoint."""
        self._table.data[key] = value
        self.pending.append((key, value, partition))

    def delete(self, key: bytes, partition: int) -> None:
        """Delete a key now; its changelog tombstone goes to `partition` at the checkpoint."""
        del self._table.data[key]
        self.pending.append((key, None, partition))

    def __contains__(self, key: bytes) -> bool:
        return key in self._table.data

    def snapshot_keys(self) -> Iterator[bytes]:
        """Every stored key (a snapshot)."""
        return iter(list(self._table.data.keys()))

    def __len__(self) -> int:
        return len(self._table.data)

    def take_pending(self) -> list[Pending]:
        """The queued changelog records in production order (write order, stably sorted by the stage's order)."""
        pending, self.pending = self.pending, []
        if self._order is not None:
            order = self._order
            pending.sort(key=lambda rec: order(rec[0], rec[1]))
        return pending


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


def app_id(settings: Settings, stage: str) -> str:
    """Faust app id and consumer group of a stage."""
    return f"clinstream-{settings.site_id}-{stage}"


def changelog_topic(settings: Settings, stage: str, table_name: str) -> str:
    """The name faust gives the changelog topic of a stage's table."""
    return f"{app_id(settings, stage)}-{table_name}-changelog"


class StreamHost:
    """One stage hosted by faust: the agent, the table, the ledger and the checkpoint."""

    def __init__(self, settings: Settings, stage: HostedStage) -> None:
        self.settings = settings
        self.stage = stage
        traits = stage.traits
        state_dir = settings.state_dir / traits.name
        state_dir.mkdir(parents=True, exist_ok=True)
        self.crash = CrashPoints(state_dir)
        group = app_id(settings, traits.name)
        self.app = faust.App(
            group,
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            datadir=str(state_dir),
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.replication_factor,
            topic_disable_leader=True,
            table_standby_replicas=0,
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
        raw: Any = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.table = self.app.Table(traits.table_name, default=None, partitions=settings.topic_partitions,
                                    key_type=bytes, value_type=bytes, schema=raw, help=traits.table_help)
        self.state = TableState(self.table, traits.changelog_order)
        stage.bind(self.state)
        topics = tuple(stage.input_topics)
        source = self.app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                                value_serializer="raw", acks=False)  # offsets are committed by the ledger
        self.ledger = OffsetLedger(self.app, settings, group, topics)
        self._wire(source)

    def _wire(self, source: Any) -> None:
        app, stage, traits = self.app, self.stage, self.stage.traits

        def assignment_changed(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            stage.on_assignment_changed()

        app.on_partitions_assigned.connect(assignment_changed)
        app.on_partitions_revoked.connect(assignment_changed)

        @app.agent(source, name=f"{traits.name}-host")
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(traits.batch_max, within=traits.batch_within_s):
                try:
                    await self.checkpoint([to_in_record(e) for e in events])
                except Exception as exc:  # not durable: restart from committed offsets, never skip a batch
                    log.critical("batch of %d records failed (%s); exiting so that it is re-processed",
                                 len(events), type(exc).__name__)
                    logging.shutdown()
                    os._exit(EXIT_PRODUCE_FAILED)

        @app.timer(LEDGER_WATCH_S)  # type: ignore[untyped-decorator]
        async def watch_offsets() -> None:
            await self.ledger.watch()

        @app.task  # type: ignore[untyped-decorator]
        async def announce() -> None:
            log.info("%s worker for site %s started; group %s", traits.name, self.settings.site_id,
                     app_id(self.settings, traits.name))

        async def close_ledger(sender: Any, /, *args: Any, **kwargs: Any) -> None:
            self.ledger.close()

        app.on_before_shutdown.connect(close_ledger)

    async def checkpoint(self, records: Sequence[InRecord]) -> None:
        """Process one batch and make it durable in the one order: outputs, state, input offsets."""
        admitted = await self.ledger.admit(records)
        if not admitted:
            return
        started = time.perf_counter()
        self.state.pending.clear()
        result = self.stage.process(admitted)  # 1. state changed in memory
        self.crash.reached(CrashPoint.AFTER_PROCESS, result.counters)
        await self._produce_outputs(result.out)  # 2. outputs acknowledged
        self.crash.reached(CrashPoint.AFTER_OUTPUTS, result.counters)
        await self._produce_changelog(self.state.take_pending())  # 3. state acknowledged
        self.crash.reached(CrashPoint.AFTER_STATE_BEFORE_ACK, result.counters)
        await self.ledger.processed(offsets_of(admitted))  # 4. input offsets committed
        await self.ledger.commit()
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
        topic = self.table.changelog_topic.get_topic_name()
        futures = [await producer.send(topic, key, value, partition, None, None) for key, value, partition in pending]
        await asyncio.gather(*futures)


def run(settings: Settings, stage: HostedStage) -> None:
    """Host a stage until SIGTERM/SIGINT."""
    configure_logging(stage.traits.name)
    serve_metrics(stage.traits.name)
    host = StreamHost(settings, stage)
    worker = faust.Worker(host.app, loglevel=logging.getLogger().level, quiet=True, override_logging=False,
                          redirect_stdouts=False)
    worker.execute_from_commandline()
