"""The store's batch decoder: valid records become writer input, anything else a dead letter with a reason."""

from __future__ import annotations

import math
import uuid

from store_helpers import CODEC, erasure, feature, sample

from clinstream.core.records import InRecord
from clinstream.core.topics import ERASURE, FEATURES, SAMPLE_FEATURES
from clinstream.store.decode import ERASE, SAMPLE, WEARABLE, BatchDecoder
from clinstream.store.writer import Erasure

SITE = "site-x"


def rec(spec: object, value: bytes, offset: int = 0) -> InRecord:
    return InRecord(topic=spec.name(SITE), partition=0, offset=offset, key=None, value=value)  # type: ignore[attr-defined]


def test_valid_records_of_every_topic() -> None:
    d = BatchDecoder(CODEC, SITE)
    e = erasure(SITE, 3, requested_at=1_700_000_000_000)
    out = d.decode([
        rec(FEATURES, CODEC.encode(FEATURES.value_schema, feature(SITE, 1, 0))),
        rec(SAMPLE_FEATURES, CODEC.encode(SAMPLE_FEATURES.value_schema, sample(SITE, 1, 1))),
        rec(ERASURE, CODEC.encode(ERASURE.value_schema, e)),
    ])
    assert out.rejected == []
    assert [i.kind for i in out.items] == [WEARABLE, SAMPLE, ERASE]
    er = out.items[2].record
    assert isinstance(er, Erasure) and er.request_id == uuid.UUID(e["request_id"])
    assert er.requested_at.timestamp() == 1_700_000_000


def test_bad_records_are_rejected_with_a_reason_and_their_bytes() -> None:
    d = BatchDecoder(CODEC, SITE)
    good = feature(SITE, 1, 0)
    cases = {
        "garbage": b"\x00not avro at all",
        "truncated": CODEC.encode(FEATURES.value_schema, good)[:-7],
        "wrong record type": CODEC.encode(SAMPLE_FEATURES.value_schema, sample(SITE, 1, 1)),
        "other site": CODEC.encode(FEATURES.value_schema, feature("site-y", 1, 0)),
        "nan": CODEC.encode(FEATURES.value_schema, {**good, "values": {"mean": math.nan}}),
        "-inf after a finite value": CODEC.encode(FEATURES.value_schema,
                                                  {**good, "values": {"mean": 60.0, "min": -math.inf}}),
        "empty feature name": CODEC.encode(FEATURES.value_schema, {**good, "values": {"mean": 60.0, "": 1.0}}),
        "nul in a feature name": CODEC.encode(FEATURES.value_schema, {**good, "values": {"mean": 60.0, "m\x00": 1.0}}),
        "inf completeness": CODEC.encode(FEATURES.value_schema, {**good, "completeness": math.inf}),
        "completeness > 1": CODEC.encode(FEATURES.value_schema, {**good, "completeness": 1.5}),
        "empty window": CODEC.encode(FEATURES.value_schema, {**good, "window_end": good["window_start"]}),
        "nul in pseudonym": CODEC.encode(FEATURES.value_schema, {**good, "participant_pseudonym": "a\x00b"}),
        "empty": b"",
    }
    records = [rec(FEATURES, v, i) for i, v in enumerate(cases.values())]
    records.append(rec(SAMPLE_FEATURES, CODEC.encode(SAMPLE_FEATURES.value_schema,
                                                     {**sample(SITE, 1, 1), "freeze_thaw_count": -1}), 99))
    records.append(rec(ERASURE, CODEC.encode(ERASURE.value_schema, {**erasure(SITE, 1), "participant_pseudonym": ""}),
                       100))
    out = d.decode(records)
    assert out.items == []
    assert [r.value for r, _ in out.rejected] == [r.value for r in records]
    reasons = [why.reason for _, why in out.rejected]
    assert all(reasons) and "completeness outside [0, 1]" in reasons and "record of another site" in reasons
    assert "non-finite feature value" in reasons and "empty value" in reasons
    assert reasons.count("non-finite feature value") == 2
    assert reasons.count("empty or invalid feature name") == 2


def test_a_record_handed_over_in_process_is_checked_as_decoded_and_dead_lettered_as_encoded() -> None:
    d = BatchDecoder(CODEC, SITE)
    good = CODEC.decode_plain(CODEC.encode(FEATURES.value_schema, feature(SITE, 1, 0)))
    bad = {**good, "completeness": 1.5}
    out = d.decode([InRecord(FEATURES.name(SITE), -1, -1, None, b"", record=good),
                    InRecord(FEATURES.name(SITE), -1, -1, None, b"", record=bad)])
    assert [i.record for i in out.items] == [good]
    assert [why.reason for _, why in out.rejected] == ["completeness outside [0, 1]"]
    rejected = out.rejected[0][0]
    assert CODEC.decode_plain(d.original_bytes(rejected)) == bad  # the dead letter carries the record's bytes
    assert d.original_bytes(rec(FEATURES, b"\x00raw")) == b"\x00raw"
