"""A replay on the real broker and TimescaleDB runs its batches with automatic collection off and freezes what each
batch leaves (garbage is collected when a full pass is due, not by allocation count)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence

import pytest
from features_factories import generate
from features_kafka import produce
from replay_helpers import key_of

from clinstream.core.config import Settings
from clinstream.core.kafka import DurableProducer
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import tool_consumer
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.replay.engine import Delivery, ReplayEngine, make_adapter
from clinstream.replay.plan import make_plan
from clinstream.replay.specs import SINK

pytestmark = pytest.mark.integration


def test_a_replay_runs_its_batches_with_automatic_collection_off_and_freezes_their_survivors(
        kafka_site: Settings, db_site: Settings) -> None:
    settings = kafka_site
    data = generate(n_participants=2, hours=2, seed=11, site_id=settings.site_id)
    produce(settings, PSEUDO_TELEMETRY.name(settings.site_id),
            [(key_of(settings, b.participant), b.value) for b in data.blocks])
    stage = make_adapter(settings, "features", 2, ())
    seen: list[tuple[bool, int]] = []  # per batch: automatic collection on?, objects frozen when it starts
    process = stage.process

    def observed(records: Sequence[InRecord]) -> BatchResult:
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        return process(records)

    stage.process = observed  # type: ignore[method-assign]
    consumer = tool_consumer(settings, f"clinstream-{settings.site_id}-replay-planner")
    try:
        plan = make_plan(consumer, run_id="collection", site_id=settings.site_id, stage="features",
                         topics=stage.input_topics(), version=2, in_place=False)
    finally:
        consumer.close()
    producer = DurableProducer(settings)
    assert SINK.sink is not None
    sink = Delivery(settings, plan.run_id, producer, SINK.sink(settings))
    frozen_before = gc.get_freeze_count()
    try:
        outcome = ReplayEngine(settings, plan, stage, sink, batch_max=50, stop=threading.Event()).run()
    finally:
        sink.close()
        producer.close()
    assert outcome.checkpoint.counters["records_read"] == len(data.blocks)
    assert len(seen) > 2
    assert not any(enabled for enabled, _ in seen)  # every batch ran without automatic collection
    assert all(frozen > frozen_before for _, frozen in seen[1:])  # each batch's survivors were frozen after it
    assert gc.isenabled()  # restored when the run ended
    assert (gc.get_freeze_count() > 0) == (frozen_before > 0)  # frozen after it only if the process was before
