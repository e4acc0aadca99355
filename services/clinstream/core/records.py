"""Typed envelopes passed between Kafka and the batch processors of every stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clinstream.core.kafka import Header


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed Kafka record, as a processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int = 0
    record: dict[str, Any] | None = None  # the plain record itself, when it never left the process (`value` empty)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record a processor wants produced."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[Header] | None = None
    # instead of `value` (then empty): the plain record (timestamps as epoch-ms ints), as Avro decodes it, for a
    # consumer in the same process (a replay hands feature records to the store's sink without encoding them)
    record: dict[str, Any] | None = None


@dataclass(slots=True)
class BatchResult:
    """What a processor made of one input batch, with counters for metrics and summaries."""

    out: list[OutRecord] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a named counter."""
        self.counters[name] = self.counters.get(name, 0) + n


def from_kafka_message(msg: Any) -> InRecord:
    """A confluent-kafka message (the hosts' and the tools' input) as the processors' envelope."""
    ts_type, ts = msg.timestamp()
    return InRecord(topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
                    key=msg.key(), value=msg.value() or b"", timestamp_ms=ts if ts_type and ts > 0 else 0)
