"""A bounded run stopped at a checkpoint step of any batch and resumed reads every offset of its ranges once more at
most, on the real broker (the replay's resume, exactly at batch boundaries)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Producer

from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.stream_host import OffsetRange, run_bounded, tool_consumer, watermarks
from clinstream.core.topics import PSEUDO_TELEMETRY

pytestmark = pytest.mark.integration

_BATCH = 50


class _Died(Exception):
    """Stands for a SIGKILL at a checkpoint step."""


class _Stage:
    def process(self, records: Sequence[InRecord]) -> BatchResult:
        return BatchResult()

    def finish(self) -> list[BatchResult]:
        return []


class _Checkpoint:
    """Counts what was delivered; `saved` is what a checkpoint file would hold (next offsets, delivered offsets)."""

    def __init__(self, saved: tuple[dict[str, int], list[tuple[int, int]]], die: tuple[str, int] | None) -> None:
        self.saved = saved
        self.delivered = list(saved[1])
        self.die = die
        self.batches = 0

    def deliver(self, records: Sequence[InRecord], result: BatchResult) -> None:
        self.delivered += [(r.partition, r.offset) for r in records]
        self.batches += bool(records)
        if self.die == ("before-state", self.batches):
            raise _Died

    def save_state(self, nxt: Mapping[str, int], *, completed: bool, force: bool) -> bool:
        self.saved = (dict(nxt), list(self.delivered))
        if self.die == ("before-commit", self.batches):
            raise _Died
        return True


def _produced(s: Settings, records: int) -> list[OffsetRange]:
    """Produce records to the site's telemetry topic; every partition's range from 0 to its end."""
    topic = PSEUDO_TELEMETRY.name(s.site_id)
    producer = Producer(producer_config(s))
    for i in range(records):
        producer.produce(topic, key=f"k{i}".encode(), value=b"v")
        producer.poll(0)
    assert producer.flush(30) == 0
    consumer = tool_consumer(s, f"clinstream-{s.site_id}-test-planner")
    try:
        return [OffsetRange(topic, p, 0, watermarks(consumer, topic, p)[1]) for p in range(s.topic_partitions)]
    finally:
        consumer.close()


@pytest.mark.parametrize("step", ["before-state", "before-commit"])
@pytest.mark.parametrize("batches", [1, 3, 7])
def test_a_run_stopped_at_a_batch_boundary_resumes_with_every_offset_read(kafka_site: Settings, tmp_path: Path,
                                                                           step: str, batches: int) -> None:
    s = kafka_site
    ranges = _produced(s, 1299)  # the replay test's record count: batches of 50 do not divide it
    group = f"clinstream-{s.site_id}-replay-test"
    start = {r.tp: r.start for r in ranges}
    first = _Checkpoint((dict(start), []), (step, batches))
    with pytest.raises(_Died):
        run_bounded(s, group, ranges, dict(start), _Stage(), first, batch_max=_BATCH, crash_dir=tmp_path)
    saved_nxt, saved_delivered = first.saved
    assert len(saved_delivered) == sum(saved_nxt[r.tp] - r.start for r in ranges)  # offsets and outputs agree
    resumed = _Checkpoint(first.saved, None)
    nxt = dict(saved_nxt)
    assert run_bounded(s, group, ranges, nxt, _Stage(), resumed, batch_max=5000, crash_dir=tmp_path)
    assert nxt == {r.tp: r.end for r in ranges}
    everything = {(r.partition, o) for r in ranges for o in range(r.start, r.end)}
    assert sorted(resumed.delivered) == sorted(everything)  # each offset once: the checkpoint was at a boundary


class _Holding:
    """A stage that holds one output back to the end of its range (as the features replay holds open windows)."""

    def __init__(self) -> None:
        self.finished = 0

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        return BatchResult()

    def finish(self) -> list[BatchResult]:
        self.finished += 1
        return [BatchResult(out=[OutRecord("held", None, f"end-{i}".encode())]) for i in range(3)]


class _Log:
    """Every delivery's outputs and every save's `completed`, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def deliver(self, records: Sequence[InRecord], result: BatchResult) -> None:
        self.events.append(("deliver", [o.value for o in result.out]))

    def save_state(self, nxt: Mapping[str, int], *, completed: bool, force: bool) -> bool:
        self.events.append(("save", completed))
        return True


@pytest.mark.parametrize("records", [0, 120])
def test_what_a_stage_holds_back_is_delivered_once_chunk_by_chunk_before_the_completed_state(
        kafka_site: Settings, records: int) -> None:
    s = kafka_site
    ranges = _produced(s, records)
    stage, log = _Holding(), _Log()
    assert run_bounded(s, f"clinstream-{s.site_id}-replay-held", ranges, {r.tp: r.start for r in ranges}, stage, log,
                       batch_max=_BATCH, crash_dir=None)
    assert stage.finished == 1
    held = [(i, outs) for i, (what, outs) in enumerate(log.events)
            if what == "deliver" and isinstance(outs, list) and outs and outs[0].startswith(b"end")]
    assert [outs for _, outs in held] == [[b"end-0"], [b"end-1"], [b"end-2"]]  # each chunk once, on its own, in order
    first_completed = log.events.index(("save", True))
    assert held[-1][0] < first_completed and ("save", True) not in log.events[:held[-1][0]]
