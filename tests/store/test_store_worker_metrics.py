"""`clinstream worker store` serves Prometheus metrics: after real feature records, a bad record and an erasure,
rows written, erasures, dead letters by reason and batches are counted; no label value is an identifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from store_helpers import StoreProcess, erasure, feature, pseudonym, send

from clinstream.core.config import Settings
from clinstream.core.kafka import DurableProducer
from clinstream.core.topics import ERASURE, FEATURES
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
def metrics_store(kafka_site: Settings, db_site: Settings, tmp_path: Path) -> Iterator[tuple[StoreProcess, str]]:
    worker = StoreProcess(db_site, tmp_path / "store.log")
    url = metrics_on_free_port(worker.env, "store")
    worker.start()
    yield worker, url
    worker.stop()


def test_store_worker_counts_rows_erasures_and_dead_letters(
        db_site: Settings, metrics_store: tuple[StoreProcess, str]) -> None:
    worker, url = metrics_store
    s = db_site.site_id
    records = [feature(s, who, minute) for who in range(3) for minute in range(10)]
    producer = DurableProducer(db_site)
    try:
        send(db_site, producer, FEATURES, records, raw=[b"\xc3\x01garbage" + bytes(20)])
        send(db_site, producer, FEATURES, records[:5])  # already stored: unchanged
    finally:
        producer.close()

    def written() -> Samples | None:
        assert worker.alive(), worker.log_text()[-3000:]
        samples = scrape(url)
        return samples if value(samples, "clinstream_stage_records_total", stage="store") >= 36 else None

    samples = wait_for("the store worker's metrics to count every record", written, timeout_s=120)
    assert value(samples, "clinstream_store_rows_written_total", kind="wearable") == 30
    repeated = (value(samples, "clinstream_store_rows_written_total", kind="unchanged")
                + value(samples, "clinstream_store_rows_written_total", kind="coalesced"))
    assert repeated == 5  # in a later batch: unchanged; in the same batch: coalesced
    assert value(samples, "clinstream_dlq_records_total", stage="store") == 1
    producer = DurableProducer(db_site)
    try:
        send(db_site, producer, ERASURE, [erasure(s, 1)])
    finally:
        producer.close()

    def erased() -> Samples | None:
        samples = scrape(url)
        return samples if value(samples, "clinstream_store_erasures_total") == 1 else None

    samples = wait_for("the erasure to be counted", erased, timeout_s=120)
    assert value(samples, "clinstream_stage_batch_seconds_count", stage="store") == \
        value(samples, "clinstream_stage_batches_total", stage="store")
    assert_names_consistent_and_labels_anonymous(samples, httpx.get(url, timeout=2.0).text,
                                                 [pseudonym(who) for who in range(3)])
