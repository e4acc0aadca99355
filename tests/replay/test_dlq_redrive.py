"""`clinstream dlq list|show|redrive` on the real broker and DB: a rule relaxed, records re-driven exactly once.

The features stage rejects blocks whose samples lie more than `max_future_skew_s` after their receipt. Three
such blocks (and one undecodable record) are dead-lettered by the live processor; the rule is then relaxed
(the live host restarts with the new setting, the CLI runs with the same environment variable), and the
re-drive hands the three blocks back to the pseudonymised telemetry topic exactly once; the undecodable
record stays in the DLQ and a second re-drive sends nothing again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from features_factories import MIN, T0, block, hr_body, pseudonym
from features_kafka import produce
from pseudonymise_kafka import read_topic
from replay_helpers import LiveFeatures, StoreThread, clinstream_json, key_of, pipeline_idle, scalar

from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REDRIVEN_FROM
from clinstream.core.topics import PSEUDO_TELEMETRY, Stage, dlq
from clinstream.features.config import FeatureSettings
from clinstream.replay.redrive import redrive_group
from condition_wait import wait_for

pytestmark = pytest.mark.integration

SKEW = "event time after receipt (device clock)"
RELAXED = {"CLINSTREAM_FEATURES_MAX_FUTURE_SKEW_S": "3600"}


@pytest.fixture
def pipeline(kafka_site: Settings, db_site: Settings) -> Iterator[tuple[Settings, LiveFeatures]]:
    live, store = LiveFeatures(kafka_site, FeatureSettings(max_future_skew_s=600)), StoreThread(kafka_site)
    live.start()
    store.start()
    try:
        yield kafka_site, live
    finally:
        live.stop()
        store.stop()


def test_redrive_after_relaxing_a_rule_moves_records_into_the_stream_exactly_once(
        pipeline: tuple[Settings, LiveFeatures], tmp_path: Path) -> None:
    s, live = pipeline
    site = s.site_id
    who, dev = pseudonym("P-000777"), pseudonym("DEV-777")
    normal = [block(who, dev, i, T0 + i * MIN, "HeartRateSamples", hr_body([j * 1000 for j in range(60)],
                                                                              [70.0] * 60), site_id=site)
              for i in range(30)]
    # device clock 20 min fast: samples up to 20 min after the block's receipt
    skewed = [block(who, dev, 100 + i, T0 + (40 + 25 * i) * MIN, "HeartRateSamples",
                    hr_body([j * 60_000 for j in range(21)], [80.0] * 21), received_ms=T0 + (40 + 25 * i) * MIN,
                    site_id=site) for i in range(3)]
    topic = PSEUDO_TELEMETRY.name(site)
    produce(s, topic, [(key_of(s, who), b.value) for b in [*normal, *skewed]] + [(key_of(s, who), b"not avro")])
    wait_for("live pipeline to catch up", lambda: pipeline_idle(s), timeout_s=60)
    assert live.error is None

    groups = clinstream_json(s, tmp_path, "dlq", "list", "--stage", "features")
    by_reason = {g["reason"]: g for g in groups}
    assert by_reason[SKEW]["records"] == 3 and by_reason[SKEW]["field_path"] == "measurement.offsets_ms"
    assert sum(g["records"] for g in groups) == 4
    bad_magic = next(g for g in groups if g["reason"] != SKEW)

    view = clinstream_json(s, tmp_path, "dlq", "show", bad_magic["example"], "--stage", "features")
    assert view["reason"] == bad_magic["reason"] and "original_value_hex" not in view
    assert who not in str(view)
    full = clinstream_json(s, tmp_path, "dlq", "show", by_reason[SKEW]["example"], "--stage", "features",
                           "--show-payload")
    assert full["original_value_hex"] and full["original_decoded"]["participant_pseudonym"] == who

    before = len(read_topic(s, topic))
    dry = clinstream_json(s, tmp_path, "dlq", "redrive", "--stage", "features", "--dry-run", env=RELAXED)
    assert (dry["redriven"], dry["still_failing"]) == (3, 1)
    assert len(read_topic(s, topic)) == before  # a dry run sends nothing

    live.restart(FeatureSettings(max_future_skew_s=3600))  # the fix is deployed to the live stage
    first = clinstream_json(s, tmp_path, "dlq", "redrive", "--stage", "features", env=RELAXED)
    assert (first["redriven"], first["still_failing"], first["already_redriven"]) == (3, 1, 0)
    assert first["failures"] == {bad_magic["reason"]: 1}
    second = clinstream_json(s, tmp_path, "dlq", "redrive", "--stage", "features", env=RELAXED)
    assert (second["redriven"], second["still_failing"], second["examined"]) == (0, 1, 1)  # only the pending one

    records = read_topic(s, topic)
    copies = Counter(r.value for r in records)
    assert all(copies[b.value] == 2 for b in skewed)  # the original and exactly one re-driven copy
    assert len(records) == before + 3
    redriven = [r for r in records if any(k == HEADER_REDRIVEN_FROM for k, _ in r.headers)]
    assert sorted(r.value or b"" for r in redriven) == sorted(b.value for b in skewed)
    assert len(read_topic(s, dlq(Stage.FEATURES).name(site))) == 4  # failures were not written again

    wait_for("live pipeline to catch up", lambda: pipeline_idle(s), timeout_s=60)
    for b in skewed:  # the re-driven blocks' minutes are now features
        assert scalar(s, "SELECT count(*) FROM wearable_features WHERE version = 1 AND feature_set = 'heart_rate'"
                         " AND window_kind = 'MINUTE' AND window_start >= to_timestamp(%s / 1000.0)"
                         " AND window_start < to_timestamp(%s / 1000.0)",
                      (b.record["start"], b.record["start"] + 21 * MIN)) >= 20
    after = clinstream_json(s, tmp_path, "dlq", "list", "--stage", "features")
    assert {g["reason"]: g["redriven"] for g in after} == {SKEW: 3, bad_magic["reason"]: 0}
    assert redrive_group(s, Stage.FEATURES) == f"clinstream-{site}-redrive-features"
