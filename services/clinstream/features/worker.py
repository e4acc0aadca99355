"""`clinstream worker features`: a faust-streaming host around `FeatureProcessor`.

One agent reads PSEUDO_TELEMETRY, PSEUDO_BIOBANK and ERASURE (same partition count, all keyed by the participant
pseudonym, so a participant's blocks, events and erasure arrive in the same partition number). Batches come from
`take_events`; the processor handles each partition's records in offset order.

State lives in a faust Table (memory store, rebuilt from its changelog topic on start and after a rebalance).
`FeatureTableState` exposes it as the processor's mapping of JSON-able dicts; each write sets the local value and
queues a changelog record for the partition named in the state key (the participant's input partition), because
faust's own `table[k] = v` would use the "current event", which is unset inside a batch.

Per batch, in this order: every output record is produced and its broker acknowledgement awaited; then every
changelog record (window/sample entries first, the partition watermarks last) is produced and awaited; only then
are the batch's input offsets handed to the `OffsetLedger`, which commits them (faust does not track these topics:
its acknowledgement book goes wrong across rebalances; see `clinstream.core.offset_ledger`). So a durable state
change implies durable outputs, and a durable watermark implies durable entries: after a crash, the redelivered
blocks are recognised per window entry (device, sequence) and change nothing. A produce failure ends the process
(exit 70) so that a supervisor restarts it from the committed offsets.

Log lines carry counts and partitions only: never keys, values or pseudonyms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import orjson

from clinstream.core.config import Settings
from clinstream.core.constants import FEATURES_BATCH_MAX, FEATURES_BATCH_WITHIN_S, LEDGER_WATCH_S
from clinstream.core.logging import configure_logging
from clinstream.core.offset_ledger import OffsetLedger, offsets_of
from clinstream.core.records import from_faust_event as to_in_record
from clinstream.core.topics import Stage
from clinstream.features.processor import FeatureProcessor, make_processor
from clinstream.features.state import Entry, partition_of

STAGE = Stage.FEATURES.value
STATE_TABLE = "feature-state"
EXIT_PRODUCE_FAILED = 70
_BIG_JSON = b"J"  # prefix of values written by the stdlib (integers beyond 64 bits)

log = logging.getLogger("clinstream.features.worker")


def app_id(settings: Settings) -> str:
    """Faust app id and consumer group of this stage."""
    return f"clinstream-{settings.site_id}-{STAGE}"


def dumps(entry: Entry) -> bytes:
    """Serialise a state entry (orjson; the stdlib, marked, when an integer exceeds 64 bits)."""
    try:
        return orjson.dumps(entry)
    except TypeError:
        return _BIG_JSON + json.dumps(entry, separators=(",", ":")).encode()


def loads(raw: bytes) -> Entry:
    """Inverse of `dumps`."""
    if raw[:1] == _BIG_JSON:
        return json.loads(raw[1:])  # type: ignore[no-any-return]
    return orjson.loads(raw)  # type: ignore[no-any-return]


class FeatureTableState(MutableMapping[str, Entry]):
    """The processor's state mapping over a faust Table, with explicit changelog partitions and write order."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.pending: list[tuple[bytes, bytes | None, int]] = []

    def __getitem__(self, key: str) -> Entry:
        return loads(self._table.data[key.encode()])

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Fast path of `Mapping.get` without the KeyError round trip."""
        raw = self._table.data.get(key.encode())
        return default if raw is None else loads(raw)

    def __setitem__(self, key: str, entry: Entry) -> None:
        raw = dumps(entry)
        k = key.encode()
        self._table.data[k] = raw
        self.pending.append((k, raw, partition_of(key)))

    def __delitem__(self, key: str) -> None:
        k = key.encode()
        del self._table.data[k]
        self.pending.append((k, None, partition_of(key)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.encode() in self._table.data

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in list(self._table.data.keys()))

    def __len__(self) -> int:
        return len(self._table.data)


def build_app(settings: Settings) -> tuple[faust.App, FeatureProcessor]:
    """The faust app of the features stage for one site, and its processor."""
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
        broker_session_timeout=10.0,  # a SIGKILLed member leaves the group quickly
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table(STATE_TABLE, default=None, partitions=settings.topic_partitions,
                      key_type=bytes, value_type=bytes,
                      schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                                          value_serializer="raw"),
                      help="Window accumulators, sample events, watermarks (pseudonymised keys only).")
    state = FeatureTableState(table)
    processor = make_processor(settings, state)
    source = app.topic(*processor.input_topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", acks=False)  # offsets are committed by the ledger, not by faust
    ledger = OffsetLedger(app, settings, app_id(settings), processor.input_topics)

    def reset_index(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        processor.reset_index()

    app.on_partitions_assigned.connect(reset_index)
    app.on_partitions_revoked.connect(reset_index)

    async def handle(events: list[Any]) -> None:
        state.pending.clear()
        records = [to_in_record(e) for e in events]
        result = processor.process(records)
        producer = app.producer
        futures: list[Any] = []
        for out in result.out:
            futures.append(await producer.send(out.topic, out.key, out.value, None, None,
                                               list(out.headers) if out.headers else None))
        await asyncio.gather(*futures)  # outputs durable (acks=all) before any state change
        changelog = table.changelog_topic.get_topic_name()
        futures = [await producer.send(changelog, key, value, partition, None, None)
                   for key, value, partition in state.pending]
        state.pending.clear()
        await asyncio.gather(*futures)  # state durable before the input offsets may move
        await ledger.processed(offsets_of(records))
        await ledger.commit()
        if result.counters.get("dlq") or result.counters.get("late_blocks") or result.counters.get("erasures"):
            log.info("batch: %s", {k: v for k, v in sorted(result.counters.items())})

    @app.agent(source, name=f"{STAGE}-pseudo")
    async def features(stream: Any) -> None:
        async for events in stream.take_events(FEATURES_BATCH_MAX, within=FEATURES_BATCH_WITHIN_S):
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
        log.info("features worker for site %s started; group %s", settings.site_id, app_id(settings))

    return app, processor


def run(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    configure_logging(STAGE)
    app, _ = build_app(settings)
    worker = faust.Worker(app, loglevel=logging.getLogger().level, quiet=True, override_logging=False,
                          redirect_stdouts=False)
    worker.execute_from_commandline()
