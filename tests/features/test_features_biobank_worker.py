"""`clinstream worker features` on the real broker: three-generation lineage and SPREC as the pure processor says.

The events go in shuffled with redeliveries; the worker's latest sample records equal the pure processor's on the
events in order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from biobank_helpers import CHILD, GP, P1, PARENT, latest_samples, three_generations
from features_factories import records_of, run
from features_kafka import FeaturesWorker, produce, read_topic
from test_features_worker import worker  # noqa: F401  (the features worker fixture)

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.topics import PSEUDO_BIOBANK, SAMPLE_FEATURES
from condition_wait import wait_for

pytestmark = pytest.mark.integration


def test_worker_derives_lineage_and_sprec_like_the_pure_processor(kafka_site: Settings,
                                                                  worker: FeaturesWorker) -> None:  # noqa: F811
    topic = PSEUDO_BIOBANK.name(kafka_site.site_id)
    values = three_generations()
    want = latest_samples(run(records_of([(topic, P1, v) for v in values], site_id=kafka_site.site_id),
                              site_id=kafka_site.site_id, version=2)[0])
    rng = random.Random(11)
    sent = values + rng.sample(values, 5)
    rng.shuffle(sent)
    worker.env["CLINSTREAM_FEATURES_VERSION"] = "2"
    worker.start()
    produce(kafka_site, topic, [(subject_key(kafka_site.site_id, P1), v) for v in sent])

    def complete() -> dict[str, dict[str, Any]] | None:
        got = latest_samples(read_topic(kafka_site, SAMPLE_FEATURES.name(kafka_site.site_id)))
        ready = all(s in got and got[s]["revision"] == want[s]["revision"] for s in (GP, PARENT, CHILD))
        return got if ready else None

    got = wait_for("sample records of every event", complete, timeout_s=90)
    assert worker.alive(), worker.log_text()[-3000:]
    assert got == want
    assert [got[s]["freeze_thaw_count"] for s in (GP, PARENT, CHILD)] == [2, 3, 3]
    assert got[CHILD]["sprec"] == "PL1-PED-A-B-N-X-X"
    assert P1 not in worker.log_text()
