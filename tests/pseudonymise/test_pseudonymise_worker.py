"""The pseudonymise worker against the real broker: consent, withdrawal latency, stable and rotated pseudonyms,
kill -9 crash safety, and no identifier in any downstream topic or in the worker's logs.

One worker process serves the whole module (a worker start joins a group); tests run in file order and each waits
for its own records, so they do not depend on one another's data.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import date
from typing import Any

import pytest
from pseudonymise_factories import assay, block, consent, encode_block, encode_event, sample_event
from pseudonymise_kafka import Rec, WorkerSite, committed_caught_up, list_topics, read_topic

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.kafka import DurableProducer
from clinstream.core.records import InRecord
from clinstream.core.topics import (
    AUDIT,
    CONSENT,
    ERASURE,
    PSEUDO_BIOBANK,
    PSEUDO_TELEMETRY,
    RAW_BIOBANK,
    RAW_TELEMETRY,
    Stage,
    Zone,
    dlq,
)
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import load_key_file, rotate_key_file
from clinstream.pseudonymise.processor import PseudonymiseProcessor, order_for_processing
from clinstream.pseudonymise.pseudonyms import Pseudonymiser
from clinstream.pseudonymise.worker import app_id
from condition_wait import wait_for

pytestmark = pytest.mark.integration
CODEC = get_codec()
WITHDRAWAL_BOUND_S = 3.0
DEVICE_BLOCK_INTERVAL_S = 0.02  # a streaming device's pace
BLOCKS_AFTER_WITHDRAWAL = 20
BATCH_INTERVAL_S = 0.05  # devices' pace, so that the stream is still arriving when the worker is killed


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Site:
    """Produce raw records and read outputs of the module's site."""

    def __init__(self, ws: WorkerSite) -> None:
        self.ws = ws
        self.s = ws.settings
        self.site = ws.settings.site_id
        self.producer = DurableProducer(ws.settings)

    def name(self, spec: Any) -> str:
        return str(spec.name(self.site))

    def send_events(self, events: list[dict[str, Any]]) -> None:
        self.producer.send(self.name(RAW_BIOBANK), [
            (subject_key(self.site, e["participant_id"]), encode_event(e), None) for e in events], 10)

    def send_blocks(self, blocks: list[dict[str, Any]]) -> None:
        self.producer.send(self.name(RAW_TELEMETRY), [
            (subject_key(self.site, b["participant_id"]), encode_block(b), None) for b in blocks], 10)

    def pseudo(self, pid: str) -> str:
        return Pseudonymiser(load_key_file(self.ws.key_file)).participant(pid)

    def decoded(self, spec: Any) -> list[tuple[Rec, dict[str, Any]]]:
        return [(r, CODEC.decode(r.value)) for r in read_topic(self.s, self.name(spec)) if r.value]

    def valid_raw(self, spec: Any) -> list[tuple[Rec, dict[str, Any]]]:
        """Raw records written with the topic's schema (the garbage that tests send is skipped)."""
        return [(r, CODEC.decode(r.value)) for r in read_topic(self.s, self.name(spec))
                if r.value and r.value[:2] == b"\xc3\x01" and CODEC.writer_name(r.value) == spec.value_schema]

    def of(self, spec: Any, pseudonym: str) -> list[tuple[Rec, dict[str, Any]]]:
        return [(r, d) for r, d in self.decoded(spec) if d["participant_pseudonym"] == pseudonym]

    def grant(self, pids: list[str], **kw: Any) -> None:
        """Grant consent and wait until the worker has applied it (its ConsentState is out)."""
        self.send_events([consent(pid=p, site=self.site, at=now_ms(), **kw) for p in pids])
        wanted = {self.pseudo(p) for p in pids}
        wait_for("consent states", lambda: wanted <= {
            d["participant_pseudonym"] for _, d in self.decoded(CONSENT) if d["active"]}, 90)

    def caught_up(self) -> None:
        wait_for("the worker to commit every raw record", lambda: committed_caught_up(
            self.s, app_id(self.s), [self.name(RAW_TELEMETRY), self.name(RAW_BIOBANK)]), 60)


@pytest.fixture(scope="module")
def site(worker_site: WorkerSite) -> Site:
    return Site(worker_site)


def test_consent_gates_the_flow_bad_input_goes_to_the_dlq_and_domains_are_separate(site: Site) -> None:
    site.grant(["P-000101"])
    site.grant(["P-000104"], birth=date(1930, 2, 1), postcode="EH1 1YZ")
    blocks = [block(pid="P-000101", device="SN-LEAK-0101", seq=i, site=site.site) for i in range(5)]
    blocks.append(block(pid="P-000101", device="P-000101", seq=99, site=site.site))  # serial == participant id
    no_consent = [block(pid="P-000102", device="SN-LEAK-0102", seq=i, site=site.site) for i in range(4)]
    site.send_blocks(blocks + no_consent)
    site.send_events([sample_event(pid="P-000101", barcode="BC-LEAK-0101", site=site.site, at=now_ms()),
                      assay(pid="P-000101", barcode="BC-LEAK-0101", site=site.site, at=now_ms()),
                      sample_event(pid="P-000102", barcode="BC-LEAK-0102", site=site.site, at=now_ms())])
    garbage = [b"P-000101 Testa Synthetica 1951-07-03", b"\xc3\x01" + b"\x07" * 12]
    site.producer.send(site.name(RAW_TELEMETRY), [(subject_key(site.site, "P-000101"), g, None) for g in garbage], 10)
    site.producer.send(site.name(RAW_BIOBANK), [(None, b"{}", None)], 10)
    p101, p102 = site.pseudo("P-000101"), site.pseudo("P-000102")
    out = wait_for("six blocks of P-000101", lambda: len(r := site.of(PSEUDO_TELEMETRY, p101)) >= 6 and r, 60)
    site.caught_up()
    assert sorted(d["sequence"] for _, d in site.of(PSEUDO_TELEMETRY, p101)) == [0, 1, 2, 3, 4, 99]
    assert not site.of(PSEUDO_TELEMETRY, p102) and not site.of(PSEUDO_BIOBANK, p102)
    kinds = Counter(d["payload"][0].rsplit(".", 1)[-1] for _, d in site.of(PSEUDO_BIOBANK, p101))
    assert kinds == {"PseudonymisedConsentEvent": 1, "PseudonymisedSampleEvent": 1, "PseudonymisedAssayResult": 1}
    # Domains: the serial that equals the participant id gets an unrelated device pseudonym.
    [(_, same)] = [(r, d) for r, d in out if d["sequence"] == 99]
    assert same["device_pseudonym"] != same["participant_pseudonym"]
    assert same["device_pseudonym"] == Pseudonymiser(load_key_file(site.ws.key_file)).device("P-000101")
    [(_, old)] = [(r, d) for r, d in site.of(PSEUDO_BIOBANK, site.pseudo("P-000104"))]
    assert old["payload"][1]["birth_year"] == "90+" and old["payload"][1]["region"] == "EH"
    dead = [CODEC.decode(r.value) for r in read_topic(site.s, site.name(dlq(Stage.PSEUDONYMISE))) if r.value]
    assert sorted(d["original_value"] for d in dead) == sorted([*garbage, b"{}"])
    assert all(d["stage"] == "pseudonymise" and d["reason"] for d in dead)
    assert site.ws.worker.alive()


def test_withdrawal_stops_the_flow_within_seconds_with_erasure_and_audit(site: Site) -> None:
    pid = "P-000103"
    site.grant([pid])
    pseud = site.pseudo(pid)
    stop = threading.Event()
    sent: list[str] = []

    def stream() -> None:
        seq = 0
        while not stop.is_set():
            b = block(pid=pid, device="SN-LEAK-0103", seq=seq, site=site.site, n=10)
            site.send_blocks([b])
            sent.append(b["block_id"])
            seq += 1
            stop.wait(DEVICE_BLOCK_INTERVAL_S)  # the device's pacing, not synchronisation

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    wait_for("blocks before the withdrawal to flow", lambda: site.of(PSEUDO_TELEMETRY, pseud), 60)
    withdrawal = consent(pid=pid, action="WITHDRAW", site=site.site, at=now_ms())
    site.send_events([withdrawal])
    sent_by_withdrawal = len(sent)
    # The device keeps sending until the worker has answered the withdrawal and many blocks followed it.
    [(_, erasure)] = wait_for("the erasure request", lambda: site.of(ERASURE, pseud), 30)
    wait_for("blocks sent after the withdrawal", lambda: len(sent) >= sent_by_withdrawal + BLOCKS_AFTER_WITHDRAWAL, 30)
    stop.set()
    t.join(10)
    site.caught_up()
    [w_raw] = [r for r, d in site.valid_raw(RAW_BIOBANK) if str(d["event_id"]) == withdrawal["event_id"]]
    raw_ts = {str(d["block_id"]): r.timestamp_ms for r, d in site.valid_raw(RAW_TELEMETRY)
              if d["participant_id"] == pid}
    forwarded = site.of(PSEUDO_TELEMETRY, pseud)
    assert forwarded, "blocks before the withdrawal must flow"
    after = [b for b in sent if raw_ts[b] > w_raw.timestamp_ms]
    assert len(after) > 10, "the test must keep sending after the withdrawal"
    leaked = [d["block_id"] for _, d in forwarded if raw_ts[str(d["block_id"])] > w_raw.timestamp_ms]
    assert leaked == [], "a block sent after the withdrawal was forwarded"
    last_forwarded_s = (max(r.timestamp_ms for r, _ in forwarded) - w_raw.timestamp_ms) / 1000
    erasure_s = (wait_for("erasure", lambda: site.of(ERASURE, pseud))[0][0].timestamp_ms - w_raw.timestamp_ms) / 1000
    print(f"\nwithdrawal: last forwarded record {last_forwarded_s:+.3f} s after the withdrawal event; "
          f"erasure request {erasure_s:.3f} s after; {len(forwarded)} forwarded before, {len(after)} dropped after")
    assert last_forwarded_s < WITHDRAWAL_BOUND_S and erasure_s < WITHDRAWAL_BOUND_S
    assert erasure["key_version"] == load_key_file(site.ws.key_file).active
    audits = [d for _, d in site.of(AUDIT, pseud)]
    assert {a["action"] for a in audits} == {"CONSENT_GRANTED", "CONSENT_WITHDRAWN", "ERASURE_REQUESTED"}
    assert all(set(a) == {"audit_id", "site_id", "participant_pseudonym", "action", "at"} for a in audits)
    states = [d for _, d in site.of(CONSENT, pseud)]
    assert states[-1]["active"] is False


def test_pseudonyms_are_stable_across_restart_and_change_with_rotation(site: Site) -> None:
    pid = "P-000105"
    site.grant([pid])
    ring1 = load_key_file(site.ws.key_file)
    p1 = Pseudonymiser(ring1).participant(pid)
    site.send_blocks([block(pid=pid, device="SN-LEAK-0105", seq=1, site=site.site)])
    [(_, b1)] = wait_for("block 1", lambda: site.of(PSEUDO_TELEMETRY, p1), 30)
    site.caught_up()
    worker = site.ws.worker
    worker.stop()
    worker.start()
    site.send_blocks([block(pid=pid, device="SN-LEAK-0105", seq=2, site=site.site)])
    outs = wait_for("block 2 after restart", lambda: len(r := site.of(PSEUDO_TELEMETRY, p1)) >= 2 and r, 90)
    b2 = next(d for _, d in outs if d["sequence"] == 2)
    assert (b1["participant_pseudonym"], b1["device_pseudonym"], b1["key_version"]) == (
        b2["participant_pseudonym"], b2["device_pseudonym"], b2["key_version"]) == (
        p1, Pseudonymiser(ring1).device("SN-LEAK-0105"), ring1.active)
    # Rotate while the worker runs: within seconds, new output is signed by the new version.
    ring2 = rotate_key_file(site.ws.key_file)
    p2 = Pseudonymiser(ring2).participant(pid)
    assert p2 != p1

    def rotated() -> list[tuple[Rec, dict[str, Any]]]:
        site.send_blocks([block(pid=pid, device="SN-LEAK-0105", seq=3, site=site.site)])
        return site.of(PSEUDO_TELEMETRY, p2)

    [(_, b3), *_] = wait_for("output under the new key version", rotated, 30, every_s=1.0)
    assert b3["key_version"] == ring2.active == ring1.active + 1
    assert b3["device_pseudonym"] == Pseudonymiser(ring2).device("SN-LEAK-0105") != b1["device_pseudonym"]
    # Consent was carried over to the new pseudonym, and announced on the consent topic.
    assert any(d["active"] and d["key_version"] == ring2.active for _, d in site.of(CONSENT, p2))
    assert worker.alive()


def test_kill_9_mid_stream_loses_nothing_and_duplicates_are_byte_identical(
        site: Site, record_property: Any) -> None:
    pids = [f"P-0002{i:02d}" for i in range(8)]
    site.grant(pids)
    blocks = [block(pid=pids[i % len(pids)], device=f"SN-LEAK-02{i % len(pids):02d}", seq=i, n=30,
                    site=site.site) for i in range(3000)]
    ids = {b["block_id"] for b in blocks}

    def produce() -> None:
        for i in range(0, len(blocks), 50):
            site.send_blocks(blocks[i:i + 50])
            time.sleep(BATCH_INTERVAL_S)  # the devices' pacing, not synchronisation

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    wanted = {site.pseudo(p) for p in pids}

    def outputs() -> list[tuple[Rec, dict[str, Any]]]:
        return [(r, d) for r, d in site.decoded(PSEUDO_TELEMETRY) if d["participant_pseudonym"] in wanted]

    wait_for("a fifth of the stream", lambda: len(outputs()) >= 600, 60, every_s=0.1)
    site.ws.worker.kill9()
    t.join(60)
    site.ws.worker.start()
    def complete() -> bool:
        return ids <= {str(d["block_id"]) for _, d in outputs()}

    wait_for("every block downstream", complete, 120, every_s=1.0)
    site.caught_up()
    final = outputs()
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for r, d in final:
        by_id[str(d["block_id"])].add(r.value or b"")
    assert set(by_id) == ids, "lost or invented blocks"
    assert all(len(v) == 1 for v in by_id.values()), "a duplicate differs from its first output"
    # The output equals an uninterrupted run of the same processor over the same raw records.
    raw = [r for r, d in site.valid_raw(RAW_TELEMETRY) if d["participant_id"] in pids]
    state: dict[str, ConsentEntry] = {}
    ring = load_key_file(site.ws.key_file)
    proc = PseudonymiseProcessor(site.site, ring, state)
    grants = [r for r, d in site.valid_raw(RAW_BIOBANK) if d["participant_id"] in pids]
    recs = [InRecord(r.topic, r.partition, r.offset, r.key, r.value or b"", r.timestamp_ms) for r in grants + raw]
    expected: dict[str, bytes] = {}
    for part in order_for_processing(recs).values():
        for o in proc.process(part).out:
            if o.topic == site.name(PSEUDO_TELEMETRY) and o.value:
                expected[str(CODEC.decode(o.value)["block_id"])] = o.value
    assert {k: next(iter(v)) for k, v in by_id.items()} == {k: expected[k] for k in ids}
    duplicates = len(final) - len(ids)
    record_property("topic_level_duplicates", duplicates)
    print(f"\ncrash: {len(ids)} blocks in, {len(final)} records out, {duplicates} byte-identical duplicates")


def test_no_identifier_reaches_any_downstream_topic_or_the_logs(site: Site) -> None:
    """Scans every non-raw topic of the site (incl. later stages' DLQs and the worker's changelog) and the logs."""
    site.grant(["P-000301"], name="Testa Synthetica", birth=date(1951, 7, 3), postcode="ZZ9 9ZZ")
    site.send_blocks([block(pid="P-000301", device="SN-LEAK-0301", seq=1, site=site.site)])
    site.send_events([sample_event(pid="P-000301", barcode="BC-LEAK-0301", site=site.site, at=now_ms())])
    wait_for("P-000301's sample event", lambda: len(site.of(PSEUDO_BIOBANK, site.pseudo("P-000301"))) >= 2, 60)
    site.caught_up()
    identifiers = [b"P-0001", b"P-0002", b"P-0003", b"SN-LEAK", b"BC-LEAK", b"BC-SYN-PARENT", b"Testa Synthetica",
                   b"Opera Torrent", b"Freezer-7", b"SHIP-SYN-42", b"1951-07-03", b"1980-05-17", b"1930-02-01",
                   b"SW1A", b"EH1 1YZ", b"ZZ9 9ZZ", b"free text scope"]
    ring = load_key_file(site.ws.key_file)
    secrets = [ring.secret(v).hex().encode() for v in ring.versions] + [ring.secret(v) for v in ring.versions]
    prefix_site, prefix_worker = site.site + ".", f"clinstream-{site.site}-"
    topics = [t for t in list_topics(site.s) if t.startswith(prefix_worker)
              or (t.startswith(prefix_site) and t.split(".")[1] != Zone.RAW.value)]
    assert site.name(dlq(Stage.FEATURES)) in topics and site.name(dlq(Stage.STORE)) in topics
    assert any(t.endswith("-changelog") for t in topics)
    scanned = 0
    for topic in topics:
        for rec in read_topic(site.s, topic):
            blob = rec.blob()
            hits = [i for i in identifiers + secrets if i in blob]
            assert not hits, f"{hits} found in {topic}"
            scanned += 1
    assert scanned > 3000
    log = site.ws.worker.log_text()
    assert b"started" in log
    hits = [i for i in identifiers + secrets if i in log]
    assert not hits, f"{hits} found in the worker's log"
    for pid in ("P-000101", "P-000301"):  # nor pseudonyms: logs carry counts only
        assert site.pseudo(pid).encode() not in log
