"""Reads every record a topic holds now (up to its end offsets) with a throw-away consumer group."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from clinstream.core.config import Settings
from condition_wait import retry_while_raising, wait_until


def watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float = 15.0) -> tuple[int, int]:
    """Low and high watermark of a partition, retrying while a new topic's leaders are being elected."""
    lo, hi = retry_while_raising(lambda: consumer.get_watermark_offsets(tp, timeout=5), KafkaException, timeout_s)
    return int(lo), int(hi)


def read_values(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """The values of every record on `topic` up to the end offsets seen at the start."""
    return [value for _, value in read_records(settings, topic, timeout_s)]


def read_records(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record on `topic` up to the end offsets seen at the start."""
    return [(m.key(), m.value() or b"") for m in read_messages(settings, topic, timeout_s)]


def read_messages(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every message on `topic` from its low to its high watermarks as seen at the start (errors skipped)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in parts:
            lo, hi = watermarks(consumer, TopicPartition(topic, p))
            if hi > lo:
                ends[p] = hi
        todo = set(ends)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        out: list[Message] = []

        def read_to_the_end() -> bool:
            for m in consumer.consume(5000, 0.5):
                offset, partition = m.offset(), m.partition()
                if m.error() or offset is None or partition is None:
                    continue
                out.append(m)
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
            return not todo

        if todo:
            wait_until(read_to_the_end, timeout_s, f"the end of {topic}", step_s=0.0)
        return out
    finally:
        consumer.close()
