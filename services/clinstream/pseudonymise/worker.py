"""`clinstream worker pseudonymise`: a faust-streaming host around `PseudonymiseProcessor`.

One agent reads both raw topics (same partition count, both keyed by the raw participant key), so a
participant's consent events and data arrive in the same partition number and see one consent table.
Per batch (`take_events`), records are grouped by partition; each topic-partition keeps its offset order and
the two topics are merged by record timestamp (`order_for_processing`).

Consent state lives in a faust Table (memory store, rebuilt from its changelog topic on start). The table is
written through `ConsentTableState`, which sets the local value and queues the changelog record with the partition
of the input record being processed, so a participant's state always sits in the changelog partition co-partitioned
with that participant's raw records (faust's own `table[k] = v` would use the "current event", which is unset
inside a `take_events` batch). Every output and changelog record is sent with the faust producer and its broker
acknowledgement awaited before the batch's input offsets are handed to the `OffsetLedger`, which commits them
itself (faust's own acknowledgement book goes wrong across the rebalances that follow a SIGKILL; see
`clinstream.core.offset_ledger`), so offsets are never committed ahead of durable output (faust's
`producer.flush()` can return with records still in its buffer, so it is not relied upon). A failure to produce
ends the process (exit 70) so that a supervisor restarts it from the committed offsets; nothing is acknowledged out
of order.

Log lines carry counts, partitions and key versions only: never keys, values, pseudonyms or secrets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust

from clinstream.core.config import Settings
from clinstream.core.constants import (
    LEDGER_WATCH_S,
    PSEUDONYMISE_BATCH_MAX,
    PSEUDONYMISE_BATCH_WITHIN_S,
    WORKER_HEARTBEAT_S,
    WORKER_REBALANCE_TIMEOUT_S,
    WORKER_SESSION_TIMEOUT_S,
)
from clinstream.core.logging import configure_logging
from clinstream.core.offset_ledger import OffsetLedger, offsets_of
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.records import from_faust_event as to_in_record
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY, Stage
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import KeyRingError, KeyRingSource
from clinstream.pseudonymise.metrics import observe
from clinstream.pseudonymise.processor import PseudonymiseProcessor, order_for_processing

STAGE = Stage.PSEUDONYMISE.value
CONSENT_TABLE = "consent"
EXIT_PRODUCE_FAILED = 70

log = logging.getLogger("clinstream.pseudonymise.worker")


def app_id(settings: Settings) -> str:
    """Faust app id and consumer group of this stage."""
    return f"clinstream-{settings.site_id}-{STAGE}"


class ConsentTableState(MutableMapping[str, ConsentEntry]):
    """The processor's consent mapping over a faust Table, with explicit changelog partitions."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.partition = 0
        self.pending: list[tuple[bytes, bytes | None, int]] = []

    def __getitem__(self, key: str) -> ConsentEntry:
        return ConsentEntry.from_bytes(self._table.data[key.encode()])

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Fast path of `Mapping.get` without the KeyError round trip."""
        raw = self._table.data.get(key.encode())
        return default if raw is None else ConsentEntry.from_bytes(raw)

    def __setitem__(self, key: str, entry: ConsentEntry) -> None:
        raw = entry.to_bytes()
        self._table.data[key.encode()] = raw
        self.pending.append((key.encode(), raw, self.partition))

    def __delitem__(self, key: str) -> None:
        del self._table.data[key.encode()]
        self.pending.append((key.encode(), None, self.partition))

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in list(self._table.data.keys()))

    def __len__(self) -> int:
        return len(self._table.data)


def process_by_partition(processor: PseudonymiseProcessor, state: ConsentTableState,
                         records: list[InRecord]) -> list[tuple[int, BatchResult]]:
    """Run the processor once per partition (offset order per topic), pointing table writes at that partition."""
    results: list[tuple[int, BatchResult]] = []
    for partition, ordered in order_for_processing(records).items():
        state.partition = partition
        results.append((partition, processor.process(ordered)))
    return results


def build_app(settings: Settings) -> faust.App:
    """The faust app of the pseudonymise stage for one site."""
    key_source = KeyRingSource(settings)
    state_dir = settings.state_dir / STAGE
    state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id(settings),
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
        broker_session_timeout=WORKER_SESSION_TIMEOUT_S,
        broker_heartbeat_interval=WORKER_HEARTBEAT_S,
        broker_rebalance_timeout=WORKER_REBALANCE_TIMEOUT_S,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table(CONSENT_TABLE, default=None, partitions=settings.topic_partitions,
                      key_type=bytes, value_type=bytes,
                      schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                                          value_serializer="raw"),
                      help="Consent state per participant pseudonym (no identifiers).")
    state = ConsentTableState(table)
    processor = PseudonymiseProcessor(settings.site_id, key_source.current(), state)
    inputs = (RAW_TELEMETRY.name(settings.site_id), RAW_BIOBANK.name(settings.site_id))
    source = app.topic(*inputs, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       acks=False)  # offsets are committed by the ledger, not by faust
    ledger = OffsetLedger(app, settings, app_id(settings), inputs)

    async def handle(events: list[Any]) -> None:
        ring = key_source.current()
        if ring.active != processor.key_ring.active or ring.versions != processor.key_ring.versions:
            log.info("using key version %d for new output", ring.active)
        processor.set_key_ring(ring)
        state.pending.clear()
        records = [to_in_record(e) for e in events]
        results = process_by_partition(processor, state, records)
        producer = app.producer
        futures: list[Any] = []
        changelog = table.changelog_topic.get_topic_name()
        for key, value, partition in state.pending:
            futures.append(await producer.send(changelog, key, value, partition, None, None))
        state.pending.clear()
        for _partition, result in results:
            for out in result.out:
                futures.append(await producer.send(out.topic, out.key, out.value, None, None,
                                                   list(out.headers) if out.headers else None))
        await asyncio.gather(*futures)  # every record acknowledged (acks=all) before the offsets may move
        await ledger.processed(offsets_of(records))
        await ledger.commit()
        for partition, result in results:
            observe(settings.site_id, result.counters)
            dropped = {k: v for k, v in result.counters.items() if k.startswith("dropped")}
            if dropped:
                log.warning("partition %d: records not forwarded: %s", partition, dropped)

    @app.agent(source, name=f"{STAGE}-raw")
    async def pseudonymise(stream: Any) -> None:
        async for events in stream.take_events(PSEUDONYMISE_BATCH_MAX, within=PSEUDONYMISE_BATCH_WITHIN_S):
            try:
                await handle(list(events))
            except Exception as exc:  # produce failed: restart from committed offsets, never skip a batch
                log.critical("batch of %d records failed (%s); exiting so that it is re-processed",
                             len(events), type(exc).__name__)
                logging.shutdown()
                os._exit(EXIT_PRODUCE_FAILED)

    @app.timer(LEDGER_WATCH_S)  # type: ignore[untyped-decorator]
    async def watch_offsets() -> None:
        await ledger.watch()

    @app.task  # type: ignore[untyped-decorator]
    async def announce() -> None:
        log.info("pseudonymise worker for site %s started; key version %d; group %s",
                 settings.site_id, processor.key_ring.active, app_id(settings))

    return app


def run(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    configure_logging(STAGE)
    try:
        app = build_app(settings)
    except KeyRingError as exc:
        log.critical("cannot start: %s", exc)
        raise SystemExit(2) from None
    worker = faust.Worker(app, loglevel=logging.getLogger().level, quiet=True, override_logging=False,
                          redirect_stdouts=False)
    worker.execute_from_commandline()
