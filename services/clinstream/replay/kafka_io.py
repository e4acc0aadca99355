"""Small broker helpers of the replay tools: partition lists, watermarks, key placement, reading a topic to its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from clinstream.core.config import Settings
from clinstream.core.constants import REPLAY_POLL_S
from clinstream.core.kafka import make_consumer

_METADATA_TIMEOUT_S = 10.0


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


def partition_of_key(key: bytes, n_partitions: int) -> int:
    """The partition the murmur2 partitioner (Java clients, faust, our producers) gives a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % n_partitions


def read_to_end(settings: Settings, topic: str, group_id: str, *, starts: dict[int, int] | None = None,
                timeout_s: float = 120.0) -> Iterator[KafkaMessage]:
    """Every message of a topic from `starts` (only those partitions; default: all, from the beginning) up to the
    high watermarks of now.

    Per partition in offset order; tombstones (value None) are included. Commits nothing.
    """
    consumer = tool_consumer(settings, group_id)
    try:
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for p in partitions(consumer, topic):
            if starts is not None and p not in starts:
                continue
            lo, hi = watermarks(consumer, topic, p)
            start = max(lo, (starts or {}).get(p, lo))
            if hi > start:
                ends[p] = hi
                assign.append(TopicPartition(topic, p, start if starts else OFFSET_BEGINNING))
        if not ends:
            return
        consumer.assign(assign)
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        idle = 0
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s:.0f} s")
            msgs = consumer.consume(10_000, REPLAY_POLL_S)
            idle = idle + 1 if not msgs else 0
            for msg in msgs:
                if msg.error() is not None:
                    continue
                p, off = msg.partition() or 0, msg.offset() or 0
                if p in done or off >= ends[p]:
                    done.add(p)
                    continue
                yield msg
                if off + 1 >= ends[p]:
                    done.add(p)
            if idle >= 4:  # control records or compaction can hide the last offsets: trust the position
                for tp in consumer.position([TopicPartition(topic, p) for p in ends if p not in done]):
                    if tp.offset >= ends[tp.partition]:
                        done.add(tp.partition)
    finally:
        consumer.close()
