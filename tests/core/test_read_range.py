"""Reading a topic to its end on the real broker: every record once, and no poll asks for more records than are left
(librdkafka's consume(n, timeout) returns early only once it has n records, so asking for more waits out the poll)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from clinstream.core import stream_host
from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.topics import PSEUDO_TELEMETRY

pytestmark = pytest.mark.integration

_RECORDS = 1299


class _CountingConsumer:
    """The tool consumer, with what each consume() asked for and handed out."""

    def __init__(self, inner: Any, polls: list[tuple[int, int]]) -> None:
        self._inner = inner
        self._polls = polls

    def consume(self, n: int, timeout: float) -> list[Any]:
        msgs: list[Any] = self._inner.consume(n, timeout)
        self._polls.append((n, len(msgs)))
        return msgs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_read_range_reads_every_record_and_never_asks_for_more_than_is_left(kafka_site: Settings,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    s = kafka_site
    topic = PSEUDO_TELEMETRY.name(s.site_id)
    producer = Producer(producer_config(s))
    for i in range(_RECORDS):
        producer.produce(topic, key=f"k{i}".encode(), value=i.to_bytes(2, "big"))
        producer.poll(0)
    assert producer.flush(30) == 0
    polls: list[tuple[int, int]] = []
    make = stream_host.tool_consumer
    monkeypatch.setattr(stream_host, "tool_consumer",
                        lambda *a, **k: _CountingConsumer(make(*a, **k), polls))

    values = sorted(int.from_bytes(m.value(), "big") for m in stream_host.read_range(s, topic, f"{s.site_id}-reader"))

    assert values == list(range(_RECORDS))
    left = _RECORDS
    for asked, got in polls:
        assert 1 <= asked <= left, polls
        left -= got
    assert left == 0
