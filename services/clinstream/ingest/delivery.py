"""Delivery of one request's records: accepted records and dead letters, acknowledged within the deadline."""

from __future__ import annotations

import asyncio
import logging
import time

from clinstream.core.kafka import BrokerUnavailable, Message
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.producer import AsyncDurableProducer

log = logging.getLogger("clinstream.ingest")


async def send_all(producer: AsyncDurableProducer, batches: list[tuple[str, list[Message]]],
                   metrics: GatewayMetrics, stream: str) -> None:
    """Produce several topics' batches concurrently; BrokerUnavailable unless every record was acknowledged."""
    started = time.monotonic()
    results = await asyncio.gather(*(producer.send_async(topic, msgs) for topic, msgs in batches if msgs),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            if isinstance(result, BrokerUnavailable):
                raise result
            raise BrokerUnavailable(type(result).__name__) from result
    metrics.produce.labels(stream).observe(time.monotonic() - started)


async def deliver(producer: AsyncDurableProducer, metrics: GatewayMetrics, stream: str,
                  accepted: list[tuple[str, list[Message]]], dead: list[tuple[str, list[Message]]]) -> None:
    """Produce accepted records and dead letters; BrokerUnavailable unless all were acknowledged.

    When nothing was accepted the answer is the client's mistake (422) whatever the broker does: a dead letter
    that cannot be written then is logged and counted, and the client still gets every reason in the answer.
    """
    if any(msgs for _, msgs in accepted):
        if not producer.broker_up:
            raise BrokerUnavailable("broker down")
        await send_all(producer, [*accepted, *dead], metrics, stream)
        return
    if not any(msgs for _, msgs in dead):
        return
    try:
        if not producer.broker_up:
            raise BrokerUnavailable("broker down")
        await send_all(producer, dead, metrics, stream)
    except BrokerUnavailable:
        metrics.unavailable.labels("dlq_only").inc()
        log.warning("could not dead-letter rejected %s input (broker unavailable); the client was told", stream)
