"""`clinstream worker features` on the real broker: same finals as the pure processor, also across a SIGKILL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from features_factories import (
    CLOCK,
    clock_block,
    decoded,
    finals,
    generate,
    in_records,
    latest,
    run,
)
from features_kafka import FeaturesWorker, committed_total, produce, read_topic

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.records import OutRecord
from clinstream.core.stream_host import ChangelogOrder, TableState
from clinstream.core.topics import FEATURES, PSEUDO_TELEMETRY
from clinstream.features.processor import FeatureProcessor
from clinstream.features.worker import FeatureTableState, changelog_order
from condition_wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(kafka_site: Settings, tmp_path: Path) -> Iterator[FeaturesWorker]:
    w = FeaturesWorker(kafka_site, tmp_path / "data", tmp_path / "worker.log")
    yield w
    w.stop()


def _data(site_id: str):  # type: ignore[no-untyped-def]
    data = generate(n_participants=4, hours=7, seed=21, site_id=site_id)
    clock = clock_block(max(b.record["received_at"] for b in data.blocks), site_id=site_id)
    reference, _ = run(in_records([*data.blocks, clock], site_id=site_id), site_id=site_id, batch=2000)
    return data, clock, finals(reference), latest(reference)


def _send(settings: Settings, blocks) -> None:  # type: ignore[no-untyped-def]
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    produce(settings, topic, [(subject_key(settings.site_id, b.participant), b.value) for b in blocks])


def _send_clock(settings: Settings, clock) -> None:  # type: ignore[no-untyped-def]
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    for p in range(settings.topic_partitions):  # every partition's watermark passes every window
        produce(settings, topic, [(subject_key(settings.site_id, CLOCK), clock.value)], partition=p)


def _finals_complete(settings: Settings, n: int):  # type: ignore[no-untyped-def]
    def check():  # type: ignore[no-untyped-def]
        outs = read_topic(settings, FEATURES.name(settings.site_id))
        return outs if len(finals(outs)) >= n else None
    return check


def _finals_or_conflict(outs: list[OutRecord]) -> object:
    try:
        return finals(outs)
    except AssertionError:
        return "two different final records for one window"


def _cuts_that_change_the_result(order: ChangelogOrder | None) -> list[int]:
    """Crash after a durable prefix of one big batch's changelog (its outputs durable, its offsets not), then
    redeliver from the committed offset: the prefix lengths after which the finals differ from a clean run."""
    data = generate(n_participants=2, hours=4, seed=21)
    clock = clock_block(max(b.record["received_at"] for b in data.blocks))
    records = in_records([*data.blocks, clock])
    want = finals(run(records, batch=len(records))[0])
    first, crashed = records[:len(records) // 6], records[len(records) // 6:len(records) * 5 // 6]
    host = TableState(order)
    proc = FeatureProcessor("site-t", FeatureTableState(host))
    outs = proc.process(first).out
    host.take_pending()
    committed = {key: host.get(key) for key in host.snapshot_keys()}
    outs += proc.process(crashed).out
    pending = host.take_pending()
    cuts = sorted({*range(0, len(pending), max(len(pending) // 5, 1)), *range(len(pending) - 2, len(pending) + 1)})
    changed = []
    for cut in cuts:
        durable = dict(committed)
        for key, value, _partition in pending[:cut]:
            if value is None:
                durable.pop(key, None)
            else:
                durable[key] = value
        restored = TableState(order)
        for key, value in durable.items():
            restored.apply(0, key, value)  # one partition: a lookup does not depend on the partition
        again = FeatureProcessor("site-t", FeatureTableState(restored))
        if _finals_or_conflict(outs + again.process(records[len(first):]).out) != want:
            changed.append(cut)
    return changed


def test_any_durable_prefix_of_a_batch_changelog_gives_the_uninterrupted_finals() -> None:
    """The second cause of the SIGKILL test's failures ("two different final records for one window"): with the
    deletions of finalised windows before the watermark, a prefix holding a deletion but not the watermark let a
    redelivered block re-create the window; the features changelog order (entries, watermark, deletions) is safe."""
    assert _cuts_that_change_the_result(None) != []  # write order: entries and deletions, watermark last
    assert _cuts_that_change_the_result(changelog_order) == []


def test_worker_matches_the_pure_processor(kafka_site: Settings, worker: FeaturesWorker) -> None:
    data, clock, want, want_latest = _data(kafka_site.site_id)
    worker.start()
    _send(kafka_site, data.blocks)
    _send_clock(kafka_site, clock)
    outs = wait_for("final feature records", _finals_complete(kafka_site, len(want)), timeout_s=90)
    assert worker.alive(), worker.log_text()[-3000:]
    assert finals(outs) == want
    assert latest(outs) == want_latest
    assert all(P not in worker.log_text() for P in data.participants)  # no pseudonyms in logs


def test_sigkill_mid_stream_then_restart_gives_the_uninterrupted_result(kafka_site: Settings,
                                                                       worker: FeaturesWorker) -> None:
    data, clock, want, want_latest = _data(kafka_site.site_id)
    half = len(data.blocks) // 2
    chunks = [data.blocks[:half], data.blocks[half:]]
    worker.start()
    _send(kafka_site, chunks[0])
    topic = FEATURES.name(kafka_site.site_id)
    wait_for("first outputs", lambda: len(read_topic(kafka_site, topic)) > 100, timeout_s=60)
    group, source = f"clinstream-{kafka_site.site_id}-features", PSEUDO_TELEMETRY.name(kafka_site.site_id)
    wait_for("committed offsets", lambda: committed_total(kafka_site, group, source) > 0, timeout_s=30)
    _send(kafka_site, chunks[1][:400])  # more input in flight while the worker dies
    worker.kill9()
    assert 0 < committed_total(kafka_site, group, source) < len(data.blocks)  # it died mid-stream
    _send(kafka_site, chunks[1][400:])
    _send_clock(kafka_site, clock)
    worker.start()
    outs = wait_for("final feature records", _finals_complete(kafka_site, len(want)), timeout_s=120)
    assert worker.alive(), worker.log_text()[-3000:]
    assert finals(outs) == want
    assert latest(outs) == want_latest
    assert len(decoded(outs)) > 0
