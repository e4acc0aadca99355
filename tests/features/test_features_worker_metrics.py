"""`clinstream worker features` serves Prometheus metrics: after real records, the batch, record, window and
dead-letter series are there with consistent names, and no label value is an identifier or a pseudonym."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from features_factories import CLOCK, clock_block, generate
from features_kafka import FeaturesWorker, produce

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.topics import PSEUDO_TELEMETRY
from condition_wait import wait_for
from metrics_scrape import (
    Samples,
    assert_names_consistent_and_labels_anonymous,
    metrics_on_free_port,
    scrape,
    value,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def metrics_worker(kafka_site: Settings, tmp_path: Path) -> Iterator[tuple[FeaturesWorker, str]]:
    worker = FeaturesWorker(kafka_site, tmp_path / "data", tmp_path / "worker.log")
    url = metrics_on_free_port(worker.env, "features")
    worker.start()
    yield worker, url
    worker.stop()


def test_features_worker_serves_stage_metrics_without_identifying_labels(
        kafka_site: Settings, metrics_worker: tuple[FeaturesWorker, str]) -> None:
    worker, url = metrics_worker
    data = generate(n_participants=3, hours=3, seed=5, site_id=kafka_site.site_id)
    clock = clock_block(max(b.record["received_at"] for b in data.blocks), site_id=kafka_site.site_id)
    topic = PSEUDO_TELEMETRY.name(kafka_site.site_id)
    produce(kafka_site, topic, [(subject_key(kafka_site.site_id, b.participant), b.value) for b in data.blocks])
    for p in range(kafka_site.topic_partitions):
        produce(kafka_site, topic, [(subject_key(kafka_site.site_id, CLOCK), clock.value)], partition=p)
    produce(kafka_site, topic, [(subject_key(kafka_site.site_id, data.participants[0]), b"not avro at all")])
    sent = len(data.blocks) + kafka_site.topic_partitions + 1

    def all_counted() -> Samples | None:
        assert worker.alive(), worker.log_file.read_text()[-3000:]
        samples = scrape(url)
        done = value(samples, "clinstream_stage_records_total", stage="features") >= sent
        return samples if done and value(samples, "clinstream_features_windows_emitted_total", kind="final") else None

    samples = wait_for("the features worker's metrics to count every record", all_counted, timeout_s=120)
    assert value(samples, "clinstream_stage_records_total", stage="features") == sent
    assert value(samples, "clinstream_stage_batches_total", stage="features") >= 1
    assert value(samples, "clinstream_stage_batch_seconds_count", stage="features") == \
        value(samples, "clinstream_stage_batches_total", stage="features")
    assert value(samples, "clinstream_dlq_records_total", stage="features") == 1
    blocks = value(samples, "clinstream_stage_outcomes_total", stage="features", kind="blocks")
    assert blocks == sent - 1  # the data and clock blocks; the undecodable record is no block
    assert_names_consistent_and_labels_anonymous(samples, httpx.get(url, timeout=2.0).text, data.participants)
