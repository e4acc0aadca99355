"""A replay's delivery: store outputs through the store stage's own sink, late ones counted, the rest produced."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REPLAY_RUN
from clinstream.core.kafka import Message
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.topics import Stage, dlq
from clinstream.replay.engine import Delivery


class _Producer:
    def __init__(self) -> None:
        self.sent: dict[str, list[Message]] = {}

    def send(self, topic: str, messages: Sequence[Message], timeout_s: float) -> None:
        self.sent.setdefault(topic, []).extend(messages)


class _Sink:
    """The store's write path as the replay sees it: one refused record becomes a store dead letter."""

    def __init__(self, store_dlq: str) -> None:
        self.store_dlq = store_dlq
        self.written: list[InRecord] = []

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        self.written.extend(records)
        result = BatchResult([OutRecord(self.store_dlq, b"k", b"refused")])
        for name, n in (("feature_rows", len(records) - 1), ("wearable_written", 1), ("dead_lettered", 1)):
            result.count(name, n)
        return result

    def transient(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        """Nothing to close."""


class _Adapter:
    store_topics = frozenset({"features"})
    unpublished_topics = frozenset({"late"})


def test_feature_outputs_go_through_the_store_sink_and_dead_letters_carry_the_run(tmp_path: Path) -> None:
    settings = Settings(site_id="tdeliver", data_dir=tmp_path)  # type: ignore[call-arg]
    features_dlq, store_dlq = dlq(Stage.FEATURES).name("tdeliver"), dlq(Stage.STORE).name("tdeliver")
    producer, sink = _Producer(), _Sink(store_dlq)
    delivery = Delivery(settings, "run-1", producer, sink)  # type: ignore[arg-type]
    out = [OutRecord("features", b"a", b"f1"), OutRecord("features", b"b", b"f2"), OutRecord("late", b"a", b"l"),
           OutRecord(features_dlq, b"a", b"bad"), OutRecord("other", b"a", b"o")]
    adapter: Any = _Adapter()
    counts = delivery.deliver(adapter, BatchResult(out))
    assert [(r.topic, r.key, r.value, r.offset) for r in sink.written] == [("features", b"a", b"f1", -1),
                                                                          ("features", b"b", b"f2", -1)]
    assert counts == {"feature_records_delivered": 1, "features_written": 1, "features_unchanged": 0,
                      "dead_lettered": 2, "late_not_republished": 1, "produced": 1}
    assert set(producer.sent) == {features_dlq, store_dlq, "other"}
    run_header = (HEADER_REPLAY_RUN, b"run-1")
    assert run_header in (producer.sent[features_dlq][0][2] or [])
    assert run_header in (producer.sent[store_dlq][0][2] or [])
    assert not producer.sent["other"][0][2]
