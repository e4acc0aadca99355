"""Kafka client factories and a producer that waits for durable acknowledgement of whole batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from clinstream.core.config import Settings

Header = tuple[str, bytes]
Message = tuple[bytes | None, bytes, Sequence[Header] | None]
PartitionedRecord = tuple[bytes, bytes | None, int]  # key, value (None: a tombstone), partition


class BrokerUnavailable(RuntimeError):
    """The broker did not durably accept a batch before the deadline."""


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Durable producer settings: acks=all, idempotence, batching and lz4."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        # The Java client's partitioner, so every producer places a key in the same partition.
        "partitioner": "murmur2_random",
        "message.max.bytes": 4_000_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        "socket.connection.setup.timeout.ms": 3000,
        "reconnect.backoff.max.ms": 1000,
    }
    cfg.update(overrides)
    return cfg


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer settings: manual commits, read committed, earliest reset."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "session.timeout.ms": 10_000,
    }
    cfg.update(overrides)
    return cfg


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A confluent-kafka consumer with clinstream's defaults."""
    return Consumer(consumer_config(settings, group_id, **overrides))


class DurableProducer:
    """A thread-safe idempotent producer whose `send` returns only once every record is acknowledged.

    A send produces its records, then flushes the producer (which serves the delivery reports): a delivery report
    only records a failure, so the cost per record is one produce and one bare callback.
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = Producer(producer_config(settings, **overrides))
        self._lock = threading.Lock()

    def send(self, topic: str, messages: Sequence[Message], timeout_s: float) -> None:
        """Produce a batch and block until the broker acknowledged all of it (acks=all).

        Raises BrokerUnavailable if any record fails or the deadline passes.
        """
        self._send(topic, [{"key": key, "value": value, "headers": list(headers) if headers else None}
                           for key, value, headers in messages], timeout_s)

    def send_to_partitions(self, topic: str, records: Sequence[PartitionedRecord], timeout_s: float) -> None:
        """`send` for records with an explicit partition (a state changelog); a None value is a tombstone."""
        self._send(topic, [{"key": key, "value": value, "partition": partition} for key, value, partition in records],
                   timeout_s)

    def _send(self, topic: str, records: Sequence[dict[str, Any]], timeout_s: float) -> None:
        if not records:
            return
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        deadline = time.monotonic() + timeout_s
        produce = self._producer.produce
        with self._lock:
            for fields in records:
                while True:
                    try:
                        produce(topic, on_delivery=on_delivery, **fields)
                        break
                    except BufferError:
                        if time.monotonic() > deadline:
                            raise BrokerUnavailable("local producer queue full") from None
                        self._producer.poll(0.05)
                    except KafkaException as exc:
                        raise BrokerUnavailable(str(exc)) from exc
        # Waits for every record queued so far (another thread's too): each is acknowledged or has failed.
        if self._producer.flush(max(0.0, deadline - time.monotonic())) > 0:
            raise BrokerUnavailable("broker did not acknowledge in time")
        if errors:
            raise BrokerUnavailable(f"broker refused the batch: {errors[0]}")

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for outstanding records; returns how many are still queued."""
        return int(self._producer.flush(timeout_s))

    def close(self) -> None:
        """Flush what is still queued."""
        self.flush()
