"""The host's fence: a revocation or shutdown waits for the batch in flight, and nothing is processed until the
next assignment (a partition's new owner never meets a late changelog record or commit of the old one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from clinstream.core.config import Settings
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import StageTraits, StreamHost, TableState

_RECORD = InRecord("site.topic", 0, 0, b"k", b"v")
_YIELDS = 50  # event-loop turns given to a task that must stay blocked (no wall clock involved)


class _Stage:
    """A stage double that logs what the host asks of it."""

    traits = StageTraits("fence-test", "fence-state", "test table", batch_max=10, batch_within_s=0.1)

    def __init__(self, log: list[str]) -> None:
        self.log = log

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
                                         waiter: Callable[[], Awaitable[None]], what: str) -> None:
    """Start a batch, then `waiter` while the batch's checkpoint is blocked: the waiter must not finish first."""
    batch = asyncio.create_task(host.run_batch([_RECORD]))
    await checkpoints.started.wait()
    waiting = asyncio.create_task(waiter())
    await _turns()
    assert not waiting.done(), f"{what} while a batch was still being checkpointed"
    checkpoints.release.set()
    await asyncio.gather(batch, waiting)


def test_a_revocation_waits_for_the_batch_in_flight_then_drops_batches_until_the_next_assignment(
        tmp_path: Path) -> None:
    log: list[str] = []

    async def scenario() -> None:
        host, checkpoints = _host(tmp_path, log)
        try:
            await _waits_for_the_batch_in_flight(host, checkpoints, host.on_revoked, "the revocation returned")
            assert log == ["checkpoint started", "checkpoint done", "indexes forgotten"]

            log.clear()
            await host.run_batch([_RECORD])  # taken before the revocation: dropped
            assert log == []
            host.on_assigned()
            await host.run_batch([_RECORD])
            assert log == ["indexes forgotten", "checkpoint started", "checkpoint done"]
        finally:
            host.ledger.close()

    asyncio.run(scenario())


def test_the_shutdown_fence_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    log: list[str] = []

    async def scenario() -> None:
        host, checkpoints = _host(tmp_path, log)
        try:
            await _waits_for_the_batch_in_flight(host, checkpoints, host.fence, "the consumer could leave the group")
            await host.run_batch([_RECORD])
            assert log == ["checkpoint started", "checkpoint done"]
        finally:
            host.ledger.close()

    asyncio.run(scenario())
