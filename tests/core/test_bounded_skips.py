"""The host's bounded mode never passes offsets of a contiguous range without their records (a consumer's skip),
and never asks the consumer for more records than its ranges hold (consume() would wait out its poll for them).

A consumer that hands out a partition's records from some offset on while the ones before it were never given
(a lost fetched batch) or reports a position past the range's end without its tail is played by a scripted
consumer: the reading logic over it is pure. The broker-level runs are in tests/replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from clinstream.core.stream_host import OffsetRange, bounded_batches

_TOPIC = "t.pseudo.telemetry.v1"


@dataclass
class _Msg:
    _partition: int
    _offset: int

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return _TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


@dataclass
class _ScriptedConsumer:
    """Holds `offsets` per partition; loses `lose` (first offset, count) of a partition once, as a fetch would."""

    offsets: dict[int, list[int]]
    lose: dict[int, tuple[int, int]] = field(default_factory=dict)
    hide_tail: dict[int, int] = field(default_factory=dict)  # partition -> records held back until a seek
    fetch: dict[int, int] = field(default_factory=dict)
    app: dict[int, int] = field(default_factory=dict)
    seeks: list[tuple[int, int]] = field(default_factory=list)
    polls: list[tuple[int, int]] = field(default_factory=list)  # (records asked for, records handed out)

    def assign(self, tps: Sequence[TopicPartition]) -> None:
        self.fetch = {tp.partition: tp.offset for tp in tps}

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.fetch.pop(tp.partition, None)

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))
        self.fetch[tp.partition] = tp.offset
        self.app.pop(tp.partition, None)
        self.hide_tail.pop(tp.partition, None)

    def position(self, tps: Sequence[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(_TOPIC, tp.partition, self.app.get(tp.partition, -1001)) for tp in tps]

    def consume(self, n: int, _timeout: float) -> list[_Msg]:
        out = self._consume(n)
        self.polls.append((n, len(out)))
        return out

    def _consume(self, n: int) -> list[_Msg]:
        out: list[_Msg] = []
        for p, start in sorted(self.fetch.items()):
            held = self.hide_tail.get(p, 0)
            visible = self.offsets[p][:len(self.offsets[p]) - held]
            for off in (o for o in visible if o >= start):
                if len(out) == n:
                    return out
                first, count = self.lose.get(p, (-1, 0))
                if first <= off < first + count:
                    del self.lose[p]
                    self.fetch[p] = off = first + count
                    self.app[p] = off  # the skipped offsets count as handed out
                    continue
                out.append(_Msg(p, off))
                self.fetch[p] = self.app[p] = off + 1
            if held:  # the tail stays unfetched, but the position says it was handed out
                self.app[p] = self.offsets[p][-1] + 1
        return out


def _read(consumer: _ScriptedConsumer, ranges: list[OffsetRange], contiguous: bool) -> list[tuple[int, int]]:
    nxt = {r.tp: r.start for r in ranges}
    seen = [(m.partition(), m.offset()) for batch in bounded_batches(consumer, ranges, nxt, 50,  # type: ignore[arg-type]
                                                                    contiguous=contiguous) for m in batch]
    assert nxt == {r.tp: r.end for r in ranges}
    return seen


def test_a_batch_the_consumer_lost_is_read_again() -> None:
    consumer = _ScriptedConsumer({0: list(range(300)), 1: list(range(200))}, lose={0: (100, 50)})
    seen = _read(consumer, [OffsetRange(_TOPIC, 0, 0, 300), OffsetRange(_TOPIC, 1, 0, 200)], contiguous=True)
    assert sorted(seen) == [(0, o) for o in range(300)] + [(1, o) for o in range(200)]  # each exactly once
    assert consumer.seeks == [(0, 100)]


def test_a_position_past_the_end_without_the_tail_reads_the_tail_again() -> None:
    consumer = _ScriptedConsumer({0: list(range(120))}, hide_tail={0: 20})
    seen = _read(consumer, [OffsetRange(_TOPIC, 0, 0, 120)], contiguous=True)
    assert seen == [(0, o) for o in range(120)]
    assert consumer.seeks == [(0, 100)]


def test_a_skip_a_fresh_read_confirms_is_passed() -> None:  # records deleted by retention
    consumer = _ScriptedConsumer({0: [*range(40), *range(90, 150)]})
    seen = _read(consumer, [OffsetRange(_TOPIC, 0, 0, 150)], contiguous=True)
    assert seen == [(0, o) for o in [*range(40), *range(90, 150)]]
    assert consumer.seeks == [(0, 40)]  # once


def test_gaps_of_a_compacted_topic_are_passed_without_reading_again() -> None:
    consumer = _ScriptedConsumer({0: [0, 1, 5, 9, 10]})
    seen = _read(consumer, [OffsetRange(_TOPIC, 0, 0, 11)], contiguous=False)
    assert seen == [(0, o) for o in [0, 1, 5, 9, 10]]
    assert consumer.seeks == []


def test_no_poll_asks_for_more_records_than_the_ranges_hold() -> None:
    # librdkafka's consume(n, timeout) returns early only once it has n records: asking for more than are left
    # makes the last batch of every run wait out the whole poll
    consumer = _ScriptedConsumer({0: list(range(130)), 1: list(range(75))})
    seen = _read(consumer, [OffsetRange(_TOPIC, 0, 10, 130), OffsetRange(_TOPIC, 1, 0, 75)], contiguous=True)
    assert len(seen) == 120 + 75
    assert all(got == asked for asked, got in consumer.polls), consumer.polls  # every poll filled: none waited
    assert [asked for asked, _ in consumer.polls] == [50, 50, 50, 45]
