"""The host around a rebalance: a fence (revocation, shutdown) waits for the batch in flight and later batches
wait for the next assignment, which restores its new partitions from the changelog (tombstones applied), keeps
the partitions it held, and drops those gone (against the real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import StageTraits, StreamHost, TableState
from clinstream.core.topic_admin import admin_client, ensure_changelog

_RECORD = InRecord("site.topic", 0, 0, b"k", b"v")
_YIELDS = 50  # event-loop turns given to a task that must stay blocked (no wall clock involved)


class _Stage:
    """A stage double that logs what the host asks of it."""

    traits = StageTraits("fence-test", "fence-state", "test table", batch_max=10, batch_within_s=0.1)

    def __init__(self, log: list[str] | None = None) -> None:
        self.log = log if log is not None else []

    @property
    def input_topics(self) -> Sequence[str]:
        return ("site.topic",)

    def bind(self, state: TableState) -> None:
        pass

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        return BatchResult()

    def on_assignment_changed(self) -> None:
        self.log.append("indexes forgotten")

    def report(self, result: BatchResult) -> None:
        pass


class _SlowCheckpoints:
    """Stands for `StreamHost.checkpoint`: each batch waits for `release` before its checkpoint completes."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, records: Sequence[InRecord]) -> None:
        self.log.append("checkpoint started")
        self.started.set()
        await self.release.wait()
        self.log.append("checkpoint done")


async def _turns() -> None:
    for _ in range(_YIELDS):
        await asyncio.sleep(0)


def _host(tmp_path: Path, log: list[str]) -> tuple[StreamHost, _SlowCheckpoints]:
    host = StreamHost(Settings(site_id="fence", data_dir=tmp_path), _Stage(log))
    checkpoints = _SlowCheckpoints(log)
    host.checkpoint = checkpoints  # type: ignore[method-assign]
    return host, checkpoints


async def _waits_for_the_batch_in_flight(host: StreamHost, checkpoints: _SlowCheckpoints,
                                         waiter: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
    """Start a batch, then `waiter` while the batch's checkpoint is blocked: the waiter must not finish first.

    (The host fences on a revocation, inside the rebalance, and before shutdown, before the consumer leaves.)"""
    batch = asyncio.create_task(host.run_batch([_RECORD]))
    await checkpoints.started.wait()
    waiting = asyncio.create_task(waiter())
    await _turns()
    assert not waiting.done(), f"{what} while a batch was still being checkpointed"
    checkpoints.release.set()
    await asyncio.gather(batch, waiting)


def test_a_fence_waits_for_the_batch_in_flight_and_later_batches_wait_for_the_next_assignment(
        tmp_path: Path) -> None:
    log: list[str] = []

    async def scenario() -> None:
        host, checkpoints = _host(tmp_path, log)
        try:
            await host.on_assigned(set())
            await _waits_for_the_batch_in_flight(host, checkpoints, host.fence, "the revocation returned")
            assert log == ["indexes forgotten", "checkpoint started", "checkpoint done"]

            log.clear()
            later = asyncio.create_task(host.run_batch([_RECORD]))  # taken before the revocation
            await _turns()
            assert not later.done() and log == [], "a batch ran between a revocation and the next assignment"
            await host.on_assigned(set())
            await later
            assert log == ["indexes forgotten", "checkpoint started", "checkpoint done"]
        finally:
            host.ledger.close()

    asyncio.run(scenario())


_CHANGELOG = [  # (partition, key, value): the changelog as earlier owners wrote it
    (0, b"k1", b"v1"), (0, b"k2", b"v2"), (0, b"k1", b"v1b"), (0, b"k2", None), (1, b"k3", b"v3"), (2, b"k4", b"v4")]


@pytest.mark.integration
def test_an_assignment_restores_new_partitions_keeps_held_ones_and_drops_those_gone(kafka_site: Settings) -> None:
    host = StreamHost(kafka_site, _Stage())
    ensure_changelog(kafka_site, host.changelog)
    try:
        producer = Producer(producer_config(kafka_site))
        for partition, key, value in _CHANGELOG:
            producer.produce(host.changelog, key=key, value=value, partition=partition)
        assert producer.flush(30) == 0

        async def assign(partitions: set[int]) -> None:
            await host.on_assigned(partitions)
            await asyncio.wait_for(host.until_ready(), 60)  # the restore runs in the background

        async def scenario() -> None:
            await assign({0, 1})
            state = host.state
            assert (state.get(b"k1"), state.get(b"k2"), state.get(b"k3"), state.get(b"k4")) == (
                b"v1b", None, b"v3", None)
            assert host.restored_records == 5

            state.put(b"k5", b"v5", 0)  # processed on partition 0 (its changelog record is not produced here)
            await host.fence()  # the revocation before every new assignment
            await assign({0, 2})
            assert (state.get(b"k1"), state.get(b"k5")) == (b"v1b", b"v5"), "a kept partition was read back again"
            assert state.get(b"k3") is None, "the state of a partition that went was kept"
            assert state.get(b"k4") == b"v4" and host.restored_records == 6

        asyncio.run(scenario())
    finally:
        host.ledger.close()
        admin = admin_client(kafka_site)  # referenced until the answer (a collected client drops its requests)
        for fut in admin.delete_topics([host.changelog], operation_timeout=30).values():
            fut.result(30)
