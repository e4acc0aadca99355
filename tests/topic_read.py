"""Reads every record a topic holds now (up to its end offsets) with a throw-away consumer group."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clinstream.core.config import Settings
from condition_wait import wait_until


def read_values(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """The values of every record on `topic` up to the end offsets seen at the start."""
    return [value for _, value in read_records(settings, topic, timeout_s)]


def read_records(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record on `topic` up to the end offsets seen at the start."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        out: list[tuple[bytes | None, bytes]] = []

        def read_to_the_end() -> bool:
            for m in consumer.consume(5000, 0.5):
                offset, partition = m.offset(), m.partition()
                if m.error() or offset is None or partition is None:
                    continue
                out.append((m.key(), m.value() or b""))
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
            return not todo

        wait_until(read_to_the_end, timeout_s, f"the end of {topic}", step_s=0.0)
        return out
    finally:
        consumer.close()
