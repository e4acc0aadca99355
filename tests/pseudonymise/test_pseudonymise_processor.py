"""The pure processor: consent enforcement, withdrawal effects, DLQ, determinism, replay and key rotation."""

from __future__ import annotations

import struct
from collections import Counter
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identifier_leaks import Identifiers, avro_string, find_leaks, zigzag_varint
from pseudonymise_factories import (
    ACC,
    SLEEP,
    T0,
    Feed,
    assay,
    block,
    consent,
    encode_block,
    sample_event,
)

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.topics import (
    AUDIT,
    CONSENT,
    ERASURE,
    FEATURES,
    LATE_TELEMETRY,
    PSEUDO_BIOBANK,
    PSEUDO_TELEMETRY,
    SAMPLE_FEATURES,
    Stage,
    dlq,
)
from clinstream.features.processor import FeatureProcessor
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.processor import PseudonymiseProcessor
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

SITE = "site-a"
RING = KeyRing(1, {1: b"k" * 32})
CODEC = get_codec()
PSEUDO_TOPICS = {t.name(SITE) for t in (PSEUDO_TELEMETRY, PSEUDO_BIOBANK, CONSENT, ERASURE, AUDIT)}
DLQ_TOPIC = dlq(Stage.PSEUDONYMISE).name(SITE)


def make(state: dict[str, ConsentEntry] | None = None, ring: KeyRing = RING, **kw: Any) -> PseudonymiseProcessor:
    return PseudonymiseProcessor(SITE, ring, state if state is not None else {}, clock=lambda: 42, **kw)


def on(result: BatchResult, spec: Any) -> list[OutRecord]:
    name = spec if isinstance(spec, str) else spec.name(SITE)
    return [o for o in result.out if o.topic == name]


def decoded(result: BatchResult, spec: Any) -> list[dict[str, Any]]:
    return [CODEC.decode(o.value) for o in on(result, spec) if o.value is not None]


def pid_pseudo(pid: str = "P-000123", ring: KeyRing = RING) -> str:
    return Pseudonymiser(ring).participant(pid)


def test_data_before_consent_is_dropped_counted_and_not_dead_lettered() -> None:
    f = Feed()
    r = make().process([f.block(block()), f.event(sample_event()), f.event(assay())])
    assert r.out == []
    assert r.counters == {"dropped_no_consent_telemetry": 1, "dropped_no_consent_biobank": 2}


def test_grant_opens_the_flow_and_is_audited_and_published() -> None:
    f = Feed()
    state: dict[str, ConsentEntry] = {}
    grant = consent(at=T0)
    r = make(state).process([f.event(grant), f.block(block()), f.event(sample_event())])
    pseud = pid_pseudo()
    assert state[pseud].active
    [cs] = decoded(r, CONSENT)
    assert cs["active"] and cs["participant_pseudonym"] == pseud and cs["key_version"] == 1
    assert cs["scope"] == ["DUO:0000042"] and str(cs["event_id"]) == grant["event_id"]
    [audit] = decoded(r, AUDIT)
    assert set(audit) == {"audit_id", "site_id", "participant_pseudonym", "action", "at"}
    assert audit["action"] == "CONSENT_GRANTED" and audit["participant_pseudonym"] == pseud
    assert len(on(r, PSEUDO_TELEMETRY)) == 1
    kinds = [e["payload"][0].rsplit(".", 1)[-1] for e in decoded(r, PSEUDO_BIOBANK)]
    assert kinds == ["PseudonymisedConsentEvent", "PseudonymisedSampleEvent"]
    assert all(o.key == subject_key(SITE, pseud) for o in r.out)
    assert r.counters["readings_forwarded"] == 60


def test_withdrawal_stops_the_next_record_and_requests_erasure() -> None:
    f = Feed()
    state: dict[str, ConsentEntry] = {}
    proc = make(state)
    before = [f.event(consent(at=T0)), f.block(block(seq=1))]
    withdrawal = consent(action="WITHDRAW", at=T0 + 10_000)
    after = [f.event(withdrawal), f.block(block(seq=2)), f.event(sample_event())]
    r = proc.process(before + after)
    tel = decoded(r, PSEUDO_TELEMETRY)
    assert [b["sequence"] for b in tel] == [1]
    assert r.counters["dropped_no_consent_telemetry"] == 1 and r.counters["dropped_no_consent_biobank"] == 1
    [erasure] = decoded(r, ERASURE)
    assert erasure["participant_pseudonym"] == pid_pseudo() and erasure["key_version"] == 1
    actions = [a["action"] for a in decoded(r, AUDIT)]
    assert actions == ["CONSENT_GRANTED", "CONSENT_WITHDRAWN", "ERASURE_REQUESTED"]
    assert [c["active"] for c in decoded(r, CONSENT)] == [True, False]
    # The withdrawal itself is not forwarded as data.
    assert [e["payload"][1]["action"] for e in decoded(r, PSEUDO_BIOBANK)] == ["GRANT"]
    assert not on(r, DLQ_TOPIC)


def test_stale_grant_never_reactivates_and_equal_times_favour_withdrawal() -> None:
    f = Feed()
    state: dict[str, ConsentEntry] = {}
    proc = make(state)
    r = proc.process([f.event(consent(at=T0 + 5)), f.event(consent(action="WITHDRAW", at=T0 + 10)),
                      f.event(consent(at=T0 + 7)),  # late resend of an older grant
                      f.event(consent(at=T0 + 10)),  # a grant at the very time of the withdrawal
                      f.block(block())])
    assert not state[pid_pseudo()].active
    assert r.counters["consent_stale"] == 2
    assert not on(r, PSEUDO_TELEMETRY)


def test_regrant_after_withdrawal_reopens_for_later_records_only() -> None:
    f = Feed()
    proc = make()
    r = proc.process([f.event(consent(at=T0)), f.event(consent(action="WITHDRAW", at=T0 + 10)),
                      f.block(block(seq=1)), f.event(consent(at=T0 + 20)), f.block(block(seq=2))])
    assert [b["sequence"] for b in decoded(r, PSEUDO_TELEMETRY)] == [2]


def test_non_active_statuses_do_not_open_the_flow_and_end_an_active_one() -> None:
    f = Feed()
    proc = make()
    r1 = proc.process([f.event(consent(status="PROPOSED", at=T0)), f.block(block())])
    assert r1.counters.get("consent_inactive") == 1 and not on(r1, PSEUDO_TELEMETRY) and not on(r1, ERASURE)
    r2 = proc.process([f.event(consent(at=T0 + 1)), f.event(consent(status="ENTERED_IN_ERROR", at=T0 + 2)),
                       f.block(block())])
    assert not on(r2, PSEUDO_TELEMETRY) and len(on(r2, ERASURE)) == 1


def test_bad_input_goes_to_the_dlq_with_original_bytes_and_never_raises() -> None:
    f = Feed()
    state: dict[str, ConsentEntry] = {}
    proc = make(state)
    good = block()
    other_site = block(site="site-b")
    mismatched_key = f.block(block(), key=subject_key(SITE, "P-999999"))
    no_key = f.block(block(), key=None)
    body = encode_block(good)
    truncated = body[:-7]
    uneven = block()
    uneven["measurement"][1]["bpm"] = uneven["measurement"][1]["bpm"][:-1]
    bad_birth = consent(birth=consent()["payload"][1]["birth_date"].replace(year=2030))
    records = [
        f.event(consent(at=T0)),
        f.raw("telemetry", b"not avro at all", key=subject_key(SITE, "P-000123")),
        f.raw("telemetry", b"\xc3\x01" + b"\x00" * 8 + b"xx"),  # unknown fingerprint
        f.raw("telemetry", CODEC.encode("org.clinstream.SubjectKey", {"site_id": SITE, "subject": "x"})),
        f.raw("biobank", body, key=subject_key(SITE, "P-000123")),  # a block on the biobank topic
        f.raw("telemetry", truncated, key=subject_key(SITE, "P-000123")),
        f.raw("telemetry", body + b"\x00", key=subject_key(SITE, "P-000123")),
        f.raw("telemetry", encode_block(block(kind=SLEEP)) + b"\x00", key=subject_key(SITE, "P-000123")),
        f.raw("telemetry", encode_block(block(kind=ACC))[:-5], key=subject_key(SITE, "P-000123")),
        f.block(uneven), f.block(other_site), mismatched_key, no_key, f.event(bad_birth),
        InRecord("site-a.raw.unknown.v1", 0, 0, None, b"x"),
        f.block(good),
    ]
    r = proc.process(records)
    dead = decoded(r, DLQ_TOPIC)
    assert len(dead) == len(records) - 2
    assert [d["original_value"] for d in dead] == [rec.value for rec in records[1:-1]]
    assert all(d["stage"] == "pseudonymise" and d["source_topic"] == rec.topic and d["source_offset"] == rec.offset
               for d, rec in zip(dead, records[1:-1], strict=True))
    reasons = Counter(d["reason"] for d in dead)
    assert reasons["record key does not match its participant"] == 1
    assert reasons["measurement arrays differ in length"] == 1
    assert reasons["birth_date is after the event"] == 1
    for d in dead:
        assert "P-000123" not in d["reason"] and "Testa" not in d["reason"]
    assert len(on(r, PSEUDO_TELEMETRY)) == 1  # the stream went on after every bad record


def test_outputs_are_deterministic_byte_for_byte() -> None:
    def run() -> list[OutRecord]:
        f = Feed()
        events = [consent(at=T0, event_id="00000000-0000-4000-8000-000000000001"),
                  consent(action="WITHDRAW", at=T0 + 9, event_id="00000000-0000-4000-8000-000000000002")]
        blocks = [block(seq=i, block_id=f"00000000-0000-4000-8000-0000000001{i:02d}") for i in range(3)]
        recs = [f.event(events[0]), f.block(blocks[0]), f.block(blocks[1]), f.event(events[1]), f.block(blocks[2])]
        return make().process(recs).out
    assert run() == run()


def _out_id(o: OutRecord) -> tuple[str, str]:
    d = CODEC.decode(o.value) if o.value else {}
    for field in ("block_id", "event_id", "audit_id", "request_id"):
        if field in d and o.topic != CONSENT.name(SITE):
            return (o.topic, str(d[field]))
    return (o.topic, f"{d.get('participant_pseudonym')}/{d.get('event_id')}")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["block", "grant", "withdraw", "sample"]), min_size=1, max_size=14),
       st.data())
def test_replay_after_a_crash_only_repeats_identical_records_or_drops_more(
        ops: list[str], data: st.DataObject) -> None:
    """Crash anywhere after the state was updated; re-read from any earlier commit point."""
    f = Feed()
    recs: list[InRecord] = []
    for i, op in enumerate(ops):
        eid = f"00000000-0000-4000-8000-{i:012d}"
        pid = data.draw(st.sampled_from(["P-000001", "P-000002"]))
        if op == "block":
            recs.append(f.block(block(pid=pid, seq=i, block_id=eid)))
        elif op == "sample":
            recs.append(f.event(sample_event(pid=pid, event_id=eid, at=T0 + i)))
        else:
            recs.append(f.event(consent(pid=pid, action="GRANT" if op == "grant" else "WITHDRAW",
                                        at=T0 + i, event_id=eid)))
    state: dict[str, ConsentEntry] = {}
    crash_at = data.draw(st.integers(0, len(recs)))
    commit = data.draw(st.integers(0, crash_at))
    first = make(state).process(recs[:crash_at]).out
    replay = make(state).process(recs[commit:]).out
    clean = make().process(recs).out
    by_id: dict[tuple[str, str], bytes | None] = {}
    for o in first + replay:
        if o.topic == CONSENT.name(SITE):
            continue
        seen = by_id.setdefault(_out_id(o), o.value)
        assert seen == o.value, "a re-processed record differs from its first output"
    clean_ids = {_out_id(o) for o in clean if o.topic != CONSENT.name(SITE)}
    data_topics = {PSEUDO_TELEMETRY.name(SITE), PSEUDO_BIOBANK.name(SITE)}
    crashed_data = {i for i in by_id if i[0] in data_topics}
    assert crashed_data <= {i for i in clean_ids if i[0] in data_topics}, "replay forwarded extra data"
    # Consent control records of the clean run all appear after the crash and replay.
    assert {i for i in clean_ids if i[0] in {AUDIT.name(SITE), ERASURE.name(SITE)}} <= set(by_id)


def test_record_timestamp_guard_keeps_pre_consent_data_dropped_on_replay() -> None:
    f = Feed()
    early = f.block(block(seq=1))
    grant = f.event(consent(at=T0))
    state: dict[str, ConsentEntry] = {}
    r1 = make(state).process([early, grant])
    assert not on(r1, PSEUDO_TELEMETRY)
    r2 = make(state).process([early, grant])  # offsets not committed: both are read again
    assert not on(r2, PSEUDO_TELEMETRY)
    assert r2.counters["dropped_no_consent_telemetry"] == 1


def test_rotation_changes_pseudonyms_keeps_consent_and_erases_every_version() -> None:
    f = Feed()
    state: dict[str, ConsentEntry] = {}
    proc = make(state)
    r1 = proc.process([f.event(consent(at=T0)), f.block(block(block_id="00000000-0000-4000-8000-00000000000a"))])
    [b1] = decoded(r1, PSEUDO_TELEMETRY)
    ring2 = RING.rotated(b"r" * 32)
    proc.set_key_ring(ring2)
    r2 = proc.process([f.block(block(block_id="00000000-0000-4000-8000-00000000000a"))])
    [b2] = decoded(r2, PSEUDO_TELEMETRY)
    assert (b1["key_version"], b2["key_version"]) == (1, 2)
    assert b1["participant_pseudonym"] != b2["participant_pseudonym"]
    assert b1["device_pseudonym"] != b2["device_pseudonym"]
    assert b2["participant_pseudonym"] == pid_pseudo(ring=ring2)
    assert b1["measurement"] == b2["measurement"] and b1["block_id"] == b2["block_id"]
    [migrated] = decoded(r2, CONSENT)
    assert migrated["key_version"] == 2 and migrated["active"]
    assert r2.counters["consent_migrated"] == 1
    r3 = proc.process([f.event(consent(action="WITHDRAW", at=T0 + 50)), f.block(block())])
    erasures = decoded(r3, ERASURE)
    assert {(e["key_version"], e["participant_pseudonym"]) for e in erasures} == {
        (1, pid_pseudo()), (2, pid_pseudo(ring=ring2))}
    assert len({str(e["request_id"]) for e in erasures}) == 2
    assert not on(r3, PSEUDO_TELEMETRY)
    # Rolling back to version 1 must not resurrect the old, active state.
    proc.set_key_ring(RING)
    assert not on(proc.process([f.block(block())]), PSEUDO_TELEMETRY)


@pytest.mark.parametrize("kind", ["hr", ACC, SLEEP])
def test_fast_path_equals_full_reencoding(kind: str) -> None:
    f = Feed()
    grant = f.event(consent(at=T0))
    rec = f.block(block(kind=kind if kind != "hr" else "org.clinstream.telemetry.HeartRateSamples",
                        block_id="00000000-0000-4000-8000-00000000000b"))
    fast = make().process([grant, rec])
    unverified = make(verify_measurements=False).process([grant, rec])
    slow_proc = make()
    slow_proc._tel_fp = b"\x00" * 8  # force the full decode / re-encode path
    slow = slow_proc.process([grant, rec])
    [a], [b], [c] = on(fast, PSEUDO_TELEMETRY), on(unverified, PSEUDO_TELEMETRY), on(slow, PSEUDO_TELEMETRY)
    assert a.value == b.value == c.value
    assert fast.counters["readings_forwarded"] == slow.counters["readings_forwarded"] == {"hr": 60, ACC: 60,
                                                                                           SLEEP: 1}[kind]
    full = CODEC.decode(a.value or b"")
    assert full["measurement"][0] == (kind if kind != "hr" else "org.clinstream.telemetry.HeartRateSamples")


PERSON = Identifiers(
    texts=["P-7306021", "SN-SYN-5830417", "BC-SYN-6629103", "BC-SYN-PARENT-4418207", "Testa Synthetica",
           "Opera Torrent", "SW1A 1AA", "Freezer-7/Rack-3/Box-12/A4", "SHIP-SYN-42", "free text scope"],
    dates=[date(1980, 5, 17)])
FEATURE_AND_PSEUDO_TOPICS = {t.name(SITE) for t in (PSEUDO_TELEMETRY, PSEUDO_BIOBANK, CONSENT, ERASURE, AUDIT,
                                                    LATE_TELEMETRY, FEATURES, SAMPLE_FEATURES)}
HOUR_MS = 3_600_000


def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _person_records(f: Feed) -> tuple[list[InRecord], list[InRecord]]:
    """One synthetic person's data over 80 h (and a block beyond the lateness horizon), then the withdrawal."""
    pid, device, barcode = "P-7306021", "SN-SYN-5830417", "BC-SYN-6629103"
    sample_kw = {"pid": pid, "barcode": barcode}
    records = [f.event(consent(pid=pid, at=T0, event_id=_uuid(1))),
               f.event(sample_event(**sample_kw, at=T0 + 1000, event_id=_uuid(2), parent="BC-SYN-PARENT-4418207")),
               f.event(assay(**sample_kw, at=T0 + 2000, event_id=_uuid(3)))]
    kinds = ["org.clinstream.telemetry.HeartRateSamples", ACC, SLEEP]
    for i in range(0, 80, 2):
        start = T0 + i * HOUR_MS
        records.append(f.block(block(pid=pid, device=device, seq=i, start=start, kind=kinds[i % 3],
                                     block_id=_uuid(100 + i), received_at=start + 9 * HOUR_MS), ts=start + 120_000))
    records.append(f.block(block(pid=pid, device=device, seq=99, start=T0, block_id=_uuid(99)),
                           ts=T0 + 81 * HOUR_MS))  # late beyond every window's horizon
    withdrawal = [f.event(consent(pid=pid, action="WITHDRAW", at=T0 + 82 * HOUR_MS, event_id=_uuid(4)))]
    return records, withdrawal


def test_no_identifier_in_any_encoding_reaches_a_pseudonymised_or_feature_topic() -> None:
    f = Feed()
    pseudonymiser, features = make(), FeatureProcessor(SITE, {})
    outputs: list[OutRecord] = []
    for batch in _person_records(f):
        pseudonymised = pseudonymiser.process(batch).out
        offsets = Counter[str]()
        feature_in = []
        for o in pseudonymised:
            if o.topic in features.input_topics and o.value is not None:
                feature_in.append(InRecord(o.topic, 0, offsets[o.topic], o.key, o.value, T0 + 82 * HOUR_MS))
                offsets[o.topic] += 1
        outputs += pseudonymised + features.process(feature_in).out
    # Every pseudonymised and feature topic carried records, so each one was searched.
    assert {o.topic for o in outputs} == FEATURE_AND_PSEUDO_TOPICS
    assert find_leaks(outputs, PERSON, CODEC) == []


def test_the_leak_search_finds_each_encoding() -> None:
    """The search itself: each encoding of an identifier, planted in an output, is found."""
    days = (date(1980, 5, 17) - date(1970, 1, 1)).days
    topic = FEATURES.name(SITE)
    planted = {
        "text": b"x P-7306021 y", "no separators": b"p7306021", "digits only": b"id=7306021",
        "Avro string": avro_string("Testa Synthetica"), "Avro long": zigzag_varint(7306021) + b"\x00\x00",
        "double": struct.pack("<d", 7306021.0), "ISO date": b"born 1980-05-17",
        "days as Avro long in a record": CODEC.encode("org.clinstream.SubjectKey",
                                                      {"site_id": SITE, "subject": str(days)}),
        "date as int32": struct.pack("<i", days), "birth as timestamp-millis": zigzag_varint(days * 86_400_000),
        "header": b"",
    }
    for what, value in planted.items():
        headers = [("h", b"SN-SYN-5830417")] if what == "header" else None
        assert find_leaks([OutRecord(topic, None, value, headers)], PERSON, CODEC), what
    assert find_leaks([OutRecord(topic, None, b"birth_year 1980, region SW", None)], PERSON, CODEC) == []


def test_consent_entry_round_trips_through_bytes() -> None:
    e = ConsentEntry(active=True, since_ms=5, updated_at_ms=7, event_id="e", key_version=3, scope=("DUO:0000042",))
    assert ConsentEntry.from_bytes(e.to_bytes()) == e
    assert e.allows(5) and not e.allows(4) and e.allows(0)
