"""`clinstream worker features` serves Prometheus metrics: after real records, the batch, record, window, late and
dead-letter series are there with consistent names, and no label value is an identifier or a pseudonym."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from features_factories import CLOCK, clock_block, generate
from features_kafka import FeaturesWorker, produce, wait_for
from prometheus_client.parser import text_string_to_metric_families

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.topics import PSEUDO_TELEMETRY
from ports import free_port

pytestmark = pytest.mark.integration

LABEL_VALUE = re.compile(r"[a-z]+(?:_[a-z]+)*")  # stage, reason and kind words: no digits, no hex, no ids
LABEL_NAMES = {"stage", "reason", "kind", "le"}


@pytest.fixture
def metrics_worker(kafka_site: Settings, tmp_path: Path) -> Iterator[tuple[FeaturesWorker, str]]:
    worker = FeaturesWorker(kafka_site, tmp_path / "data", tmp_path / "worker.log")
    base = free_port() - 1  # the features stage serves on the base port + 1
    worker.env["CLINSTREAM_METRICS_PORT"] = str(base)
    worker.start()
    yield worker, f"http://127.0.0.1:{base + 1}/metrics"
    worker.stop()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


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

    def all_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        assert worker.alive(), worker.log_file.read_text()[-3000:]
        samples = _samples(url)
        done = _value(samples, "clinstream_stage_records_total", stage="features") >= sent
        return samples if done and _value(samples, "clinstream_features_windows_emitted_total", kind="final") else None

    samples = wait_for("the features worker's metrics to count every record", all_counted, timeout_s=120)
    assert _value(samples, "clinstream_stage_records_total", stage="features") == sent
    assert _value(samples, "clinstream_stage_batches_total", stage="features") >= 1
    assert _value(samples, "clinstream_stage_batch_seconds_count", stage="features") == \
        _value(samples, "clinstream_stage_batches_total", stage="features")
    assert _value(samples, "clinstream_dlq_records_total", stage="features") == 1
    blocks = _value(samples, "clinstream_stage_outcomes_total", stage="features", kind="blocks")
    assert blocks == sent - 1  # the data and clock blocks; the undecodable record is no block
    body = httpx.get(url, timeout=2.0).text
    for participant in data.participants:  # no pseudonym, nor any 12-hex prefix of it, anywhere in the scrape
        assert participant[:12] not in body
    for name, labels in samples:
        if name.startswith("clinstream_"):
            assert re.fullmatch(r"clinstream_[a-z]+_[a-z0-9_]+", name), name
            for label, value in labels:
                assert label in LABEL_NAMES, (name, label)
                if label != "le":
                    assert LABEL_VALUE.fullmatch(value), (name, label, value)
