"""The live host's loop on the real broker runs its batches with automatic collection off, freezes what each batch
leaves, and leaves the process's collector as it found it when it stops."""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence

import pytest
from confluent_kafka import Producer
from host_doubles import KeepingSink

from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import GroupHost, StageTraits
from clinstream.core.topics import RAW_TELEMETRY
from condition_wait import wait_until


class _Sink(KeepingSink):
    """A sink double noting, per batch, whether automatic collection is on and how many objects are frozen."""

    traits = StageTraits("collection-test", "-", "-", batch_max=10, batch_within_s=0.05)

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.batches: list[tuple[bool, int]] = []

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        self.batches.append((gc.isenabled(), gc.get_freeze_count()))
        return super().process(records)


@pytest.mark.integration
def test_the_live_loop_runs_batches_with_automatic_collection_off_and_freezes_their_survivors(
        kafka_site: Settings) -> None:
    topic = RAW_TELEMETRY.name(kafka_site.site_id)
    sink = _Sink(topic)
    host = GroupHost(kafka_site, sink)
    frozen_before, enabled_before = gc.get_freeze_count(), gc.isenabled()
    loop = threading.Thread(target=host.run, daemon=True)
    loop.start()
    try:
        producer = Producer(producer_config(kafka_site))
        for i in range(40):
            producer.produce(topic, key=f"k{i}".encode(), value=b"v")
        assert producer.flush(30) == 0
        wait_until(lambda: len(sink.seen) >= 40, 60, "the host to process every record")
    finally:
        host.stop()
        loop.join(30)
    assert not loop.is_alive()
    assert len(sink.batches) >= 4  # batches of at most 10 records
    assert not any(enabled for enabled, _ in sink.batches)  # no automatic collection during a batch
    assert all(frozen > frozen_before for _, frozen in sink.batches[1:])  # each batch's survivors frozen after it
    assert gc.isenabled() == enabled_before
    assert (gc.get_freeze_count() > 0) == (frozen_before > 0)
