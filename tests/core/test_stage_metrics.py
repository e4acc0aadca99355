"""The stream workers' metrics: dead-letter reasons become bounded label words, batches count by stage and kind."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from clinstream.core.constants import DLQ_HEADER_REASON, DLQ_HEADER_STAGE
from clinstream.core.metrics_endpoint import MetricsSettings, stage_port
from clinstream.core.records import OutRecord
from clinstream.core.stage_metrics import observe_batch, observe_store_batch, reason_label

PSEUDONYM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_reason_label_keeps_the_plain_words_before_any_detail() -> None:
    assert reason_label("empty or invalid participant_pseudonym") == "empty_or_invalid_participant_pseudonym"
    assert reason_label("refused by the feature store (23505)") == "refused_by_the_feature_store"
    assert reason_label(f"unknown participant '{PSEUDONYM}'") == "unknown_participant"
    assert reason_label(f"undecodable record: {PSEUDONYM} at byte 17") == "undecodable_record"
    assert reason_label(PSEUDONYM) == "unspecified"
    assert reason_label("") == "unspecified"


@given(st.text(max_size=300))
def test_reason_label_is_always_a_few_lowercase_words(reason: str) -> None:
    label = reason_label(reason)
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", label)
    if label != "unspecified":
        assert all(part in reason.lower() for part in label.split("_"))  # words of the reason, nothing added
        assert len(label) <= len(reason)


def test_observe_batch_counts_records_windows_late_data_and_dead_letters_by_reason() -> None:
    records = _value("clinstream_stage_records_total", stage="features")
    final = _value("clinstream_features_windows_emitted_total", kind="final")
    provisional = _value("clinstream_features_windows_emitted_total", kind="provisional")
    late = _value("clinstream_features_late_records_total", kind="block")
    dead = _value("clinstream_dlq_records_total", stage="features", reason="invalid_biobank_payload")
    batches = _value("clinstream_stage_batch_seconds_count", stage="features")
    dlq = OutRecord("t-dlq", PSEUDONYM.encode(), b"x",
                    [(DLQ_HEADER_STAGE, b"features"), (DLQ_HEADER_REASON, b"invalid biobank payload")])
    observe_batch("features", 10, 0.2, {"feature_records": 5, "final_windows": 2, "late_blocks": 1},
                  [OutRecord("t-features", b"k", b"v"), dlq])
    assert _value("clinstream_stage_records_total", stage="features") == records + 10
    assert _value("clinstream_features_windows_emitted_total", kind="final") == final + 2
    assert _value("clinstream_features_windows_emitted_total", kind="provisional") == provisional + 3
    assert _value("clinstream_features_late_records_total", kind="block") == late + 1
    assert _value("clinstream_dlq_records_total", stage="features", reason="invalid_biobank_payload") == dead + 1
    assert _value("clinstream_stage_batch_seconds_count", stage="features") == batches + 1


def test_observe_store_batch_counts_rows_erasures_and_dead_letters() -> None:
    rows = _value("clinstream_store_rows_written_total", kind="wearable")
    erasures = _value("clinstream_store_erasures_total")
    dead = _value("clinstream_dlq_records_total", stage="store", reason="empty_value")
    observe_store_batch(7, 0.1, {"wearable": 4, "sample": 0, "unchanged": 3}, 2, ["empty value"])
    assert _value("clinstream_store_rows_written_total", kind="wearable") == rows + 4
    assert _value("clinstream_store_erasures_total") == erasures + 2
    assert _value("clinstream_dlq_records_total", stage="store", reason="empty_value") == dead + 1


def test_each_stage_has_its_own_port_and_zero_turns_metrics_off() -> None:
    on = MetricsSettings(port=29100)
    ports = {stage_port(on, s) for s in ("pseudonymise", "features", "store")}
    assert ports == {29100, 29101, 29102}
    assert stage_port(MetricsSettings(port=0), "features") is None
    assert on.host == "127.0.0.1"
