"""The stream host around a rebalance: an assignment restores its new partitions from the changelog (tombstones
applied), keeps the partitions it held and drops those gone (against the real broker); a partition revoked while
a batch is being checkpointed (during a produce back-off) loses its state and neither its changelog records nor
its offsets of that batch are written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from host_doubles import KeepingSink

from clinstream.core.config import Settings
from clinstream.core.kafka import BrokerUnavailable, PartitionedRecord, make_consumer, producer_config
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.stream_host import GroupHost, StageTraits, StreamHost, TableState
from clinstream.core.topic_admin import admin_client, ensure_changelog
from clinstream.core.topics import RAW_TELEMETRY
from condition_wait import wait_until

_TOPIC = "site.topic"


class _Stage:
    """A stage double: every record writes its key into the state of its partition and has one output."""

    traits = StageTraits("host-test", "host-state", "test table", batch_max=10, batch_within_s=0.1)

    def __init__(self) -> None:
        self.log: list[str] = []
        self.state: TableState | None = None

    @property
    def input_topics(self) -> Sequence[str]:
        return (_TOPIC,)

    def bind(self, state: TableState) -> None:
        self.state = state

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        assert self.state is not None
        result = BatchResult()
        for r in records:
            self.state.put(r.key or b"", r.value or b"", r.partition)
            result.out.append(OutRecord("site.out", r.key, r.value))
        return result

    def on_assignment_changed(self) -> None:
        self.log.append("indexes forgotten")

    def report(self, result: BatchResult) -> None:
        pass


_CHANGELOG = [  # (partition, key, value): the changelog as earlier owners wrote it
    (0, b"k1", b"v1"), (0, b"k2", b"v2"), (0, b"k1", b"v1b"), (0, b"k2", None), (1, b"k3", b"v3"), (2, b"k4", b"v4")]


@pytest.mark.integration
def test_an_assignment_restores_new_partitions_keeps_held_ones_and_drops_those_gone(kafka_site: Settings) -> None:
    stage = _Stage()
    host = StreamHost(kafka_site, stage)
    ensure_changelog(kafka_site, host.changelog)
    try:
        producer = Producer(producer_config(kafka_site))
        for partition, key, value in _CHANGELOG:
            producer.produce(host.changelog, key=key, value=value, partition=partition)
        assert producer.flush(30) == 0

        host.on_assigned({0, 1})
        state = host.state
        assert (state.get(b"k1"), state.get(b"k2"), state.get(b"k3"), state.get(b"k4")) == (b"v1b", None, b"v3", None)
        assert host.restored_records == 5
        assert stage.log == ["indexes forgotten"]

        state.put(b"k5", b"v5", 0)  # processed on partition 0 (its changelog record is not produced here)
        host._on_revoke(None, [TopicPartition(_TOPIC, p) for p in (0, 1)])  # type: ignore[arg-type]
        host.on_assigned({0, 2})
        assert (state.get(b"k1"), state.get(b"k5")) == (b"v1b", b"v5"), "a kept partition was read back again"
        assert state.get(b"k3") is None, "the state of a partition that went was kept"
        assert state.get(b"k4") == b"v4" and host.restored_records == 6
    finally:
        admin = admin_client(kafka_site)  # referenced until the answer (a collected client drops its requests)
        for fut in admin.delete_topics([host.changelog], operation_timeout=30).values():
            fut.result(30)


class _Producer:
    """The outputs' first produce fails (the broker is away); everything produced is recorded."""

    def __init__(self) -> None:
        self.failures = 1
        self.outputs: list[tuple[str, int]] = []
        self.changelog: list[PartitionedRecord] = []

    def send(self, topic: str, messages: Sequence[Any], timeout_s: float) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("broker did not acknowledge in time")
        self.outputs.append((topic, len(messages)))

    def send_to_partitions(self, topic: str, records: Sequence[PartitionedRecord], timeout_s: float) -> None:
        self.changelog.extend(records)


class _Consumer:
    """A group member whose assignment the test sets; commits are recorded."""

    def __init__(self, assignment: list[TopicPartition]) -> None:
        self.assigned = assignment
        self.commits: list[tuple[int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def pause(self, _partitions: object) -> None:
        pass

    def resume(self, _partitions: object) -> None:
        pass

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.extend((tp.partition, tp.offset) for tp in offsets)


@pytest.mark.integration
def test_a_partition_revoked_during_the_checkpoint_is_dropped_with_its_changelog_and_offsets(
        kafka_site: Settings) -> None:
    host = StreamHost(kafka_site, _Stage())
    ensure_changelog(kafka_site, host.changelog)
    host.on_assigned({0, 1})  # an empty changelog read back
    producer, consumer = _Producer(), _Consumer([TopicPartition(_TOPIC, 1)])
    host._producer, host._consumer = producer, consumer  # type: ignore[assignment]

    def revoke_while_backing_off(_seconds: float) -> None:  # the paused consumer's poll served a rebalance
        host._on_revoke(consumer, [TopicPartition(_TOPIC, 0)])  # type: ignore[arg-type]

    host.backoff._sleep = revoke_while_backing_off
    batch = [InRecord(_TOPIC, 0, 7, b"a", b"1"), InRecord(_TOPIC, 1, 3, b"b", b"2")]
    host.handle(batch)

    assert producer.outputs == [("site.out", 2)]  # retried unchanged: a revoked partition's outputs are duplicates
    assert producer.changelog == [(b"b", b"2", 1)], "a revoked partition's changelog records were produced"
    assert consumer.commits == [(1, 4)]
    assert host.state.get(b"a") is None, "state of a partition revoked mid-checkpoint was kept"
    assert host.state.get(b"b") == b"2"


@pytest.mark.integration
def test_partitions_paused_by_a_back_off_that_a_rebalance_interrupted_are_fetched_again(kafka_site: Settings) -> None:
    """A back-off pauses the assignment; a rebalance revokes it; the back-off ends (resuming an empty assignment);
    then the partitions come back: they must be fetched (librdkafka keeps a pause across the reassignment)."""
    topic = RAW_TELEMETRY.name(kafka_site.site_id)
    sink = KeepingSink(topic)
    host = GroupHost(kafka_site, sink)
    consumer = make_consumer(kafka_site, host.group, **host.consumer_overrides())
    host._consumer = consumer
    producer = Producer(producer_config(kafka_site))
    try:
        consumer.subscribe([topic], on_assign=host._on_assign, on_revoke=host._on_revoke, on_lost=host._on_lost)
        wait_until(lambda: consumer.poll(0.2) is None and bool(consumer.assignment()), 60, "the first assignment")
        consumer.pause(consumer.assignment())  # a back-off starts
        host._paused = True
        consumer.unsubscribe()  # a rebalance takes the partitions away
        wait_until(lambda: consumer.poll(0.2) is None and not consumer.assignment(), 60, "the revocation")
        host._retrying(lambda: None, "the step that failed")  # the back-off ends: the (empty) assignment resumed
        consumer.subscribe([topic], on_assign=host._on_assign, on_revoke=host._on_revoke, on_lost=host._on_lost)
        for i in range(20):
            producer.produce(topic, key=f"k{i}".encode(), value=b"v")
        assert producer.flush(30) == 0
        wait_until(lambda: sink.seen.extend(host._collect()) or len(sink.seen) >= 20, 60,
                   "the records after the reassignment")
    finally:
        consumer.close()
