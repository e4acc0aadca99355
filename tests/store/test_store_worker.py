"""`clinstream worker store` end to end on the real broker and TimescaleDB: crash safety (SIGKILL), offsets
committed only after the database commit, a database outage, erasure, and dead letters.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import (
    BASE_MS,
    CODEC,
    MINUTE_MS,
    StoreProcess,
    caught_up,
    committed_offsets,
    end_offsets,
    erasure,
    expected_state,
    feature,
    pseudonym,
    read_all,
    rows,
    sample,
    send,
    wearable_state,
)

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.kafka import DurableProducer
from clinstream.core.topics import AUDIT, ERASURE, FEATURES, SAMPLE_FEATURES, Stage, dlq
from clinstream.store.worker import erasure_audit_id
from clinstream_devtools.stack.common import stack_lock
from condition_wait import wait_for

pytestmark = pytest.mark.integration
ERASURE_BOUND_S = 5.0


@pytest.fixture
def site(kafka_site: Settings, db_site: Settings) -> Settings:
    """A site with its topics and a migrated schema."""
    return db_site


@pytest.fixture
def producer(site: Settings) -> Iterator[DurableProducer]:
    p = DurableProducer(site)
    yield p
    p.close()


@pytest.fixture
def worker(site: Settings, tmp_path: Path) -> Iterator[StoreProcess]:
    w = StoreProcess(site, tmp_path / "store.log")
    yield w
    w.stop()
    print(w.log_text()[-4000:])


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["participant_pseudonym"], r["feature_set"], r["window"], r["window_start"], r["version"])


def test_sigkill_mid_stream_then_restart_stores_exactly_the_expected_rows(
        site: Settings, producer: DurableProducer, worker: StoreProcess) -> None:
    s = site.site_id
    rng = random.Random(5)
    keys = [(who, minute) for who in range(8) for minute in range(2000)]
    recs: list[dict[str, Any]] = []
    for who, minute in keys:  # per key: revisions 1 and 2, a duplicate, a stale late copy; some final
        final = minute % 7 == 0
        recs += [feature(s, who, minute, revision=1), feature(s, who, minute, revision=2, is_final=final),
                 feature(s, who, minute, revision=2, is_final=final), feature(s, who, minute, revision=1)]
    rng.shuffle(recs)
    garbage = [b"\xc3\x01garbage-" + bytes([i]) * 20 for i in range(3)]
    send(site, producer, FEATURES, recs[:len(recs) // 2], raw=garbage[:2])
    send(site, producer, FEATURES, recs[len(recs) // 2:], raw=garbage[2:])

    worker.start()
    wait_for("a first offset commit", lambda: any(o > 0 for o in committed_offsets(site).values()), 60, 0.02)
    worker.kill9()
    # Offsets are committed only after the database commit: every record below a committed offset is stored
    # (with at least its (revision, is_final)), while the stream was not finished yet.
    committed = committed_offsets(site)
    stored = wearable_state(site)
    topic = FEATURES.name(s)
    below = 0
    for partition, offset, value in read_all(site, topic):
        if offset < committed[(topic, partition)] and value not in garbage:
            r = CODEC.decode(value)
            got = stored.get((r["participant_pseudonym"], r["feature_set"], r["window"],
                              int(r["window_start"].timestamp() * 1000), r["version"]))
            assert got is not None and got[:2] >= (r["revision"], r["is_final"])
            below += 1
    ends = end_offsets(site)
    assert below > 0 and any(committed[tp] < ends[tp] for tp in committed if tp[0] == topic), "killed mid-stream"
    print(f"killed with {len(stored)} of {len(keys)} rows stored; {below} records below the committed offsets")

    worker.start()
    wait_for("the restarted worker to catch up", lambda: caught_up(site), 90, 0.5)
    assert wearable_state(site) == expected_state(recs)
    assert rows(site, "SELECT count(*) FROM wearable_features") == [(len(keys),)]
    dead = {CODEC.decode(v)["original_value"] for _, _, v in read_all(site, dlq(Stage.STORE).name(s))}
    assert dead == set(garbage)
    assert worker.stop() == 0


@pytest.mark.faults  # stops the shared database
def test_database_outage_loses_nothing(site: Settings, producer: DurableProducer, worker: StoreProcess) -> None:
    from clinstream_devtools.stack.postgres import start_postgres, stop_postgres

    s = site.site_id
    before = [feature(s, 1, m) for m in range(1000)]
    during = [[feature(s, 2 + i, m, revision=2) for m in range(500)] for i in range(4)]
    samples = [sample(s, 9, n) for n in range(50)]
    worker.start()
    send(site, producer, FEATURES, before)
    wait_for("the first rows", lambda: rows(site, "SELECT count(*) FROM wearable_features")[0][0] == 1000, 60)
    wait_for("the first offsets", lambda: caught_up(site), 30)
    committed_before = committed_offsets(site)

    with stack_lock(site):  # other processes' `stack up` wait until the fault is over (as in tests/faults)
        stop_postgres(site)
        try:
            first, *rest = during
            send(site, producer, FEATURES, first)
            wait_for("the worker to meet the outage", lambda: "retrying with back-off" in worker.log_text(), 60)
            for chunk in rest:  # records keep arriving while the worker holds its batch and backs off
                send(site, producer, FEATURES, chunk)
            send(site, producer, SAMPLE_FEATURES, samples)
            assert worker.alive(), "the worker survives the outage"
            assert committed_offsets(site) == committed_before, "nothing is committed while the database is down"
        finally:
            start_postgres(site)
    wait_for("catch-up after the outage", lambda: caught_up(site), 60, 0.2)
    assert wearable_state(site) == expected_state(before + [r for chunk in during for r in chunk])
    assert rows(site, "SELECT count(*) FROM sample_features") == [(50,)]
    assert worker.alive()
    log = worker.log_text()
    assert "retrying with back-off" in log and "succeeded again" in log


def test_erasure_purges_every_feature_table_and_late_records_do_not_resurrect(
        site: Settings, producer: DurableProducer, worker: StoreProcess) -> None:
    s = site.site_id
    recs = [feature(s, who, m, window=kind) for who in (1, 2) for m in range(300) for kind in ("MINUTE", "HOUR")]
    samples = [sample(s, who, n) for who in (1, 2) for n in range(5)]
    worker.start()
    send(site, producer, FEATURES, recs)
    send(site, producer, SAMPLE_FEATURES, samples)
    wait_for("the features", lambda: rows(site, "SELECT count(*) FROM wearable_features")[0][0] == len(recs), 60)
    wait_for("the samples", lambda: rows(site, "SELECT count(*) FROM sample_features")[0][0] == len(samples), 30)

    def remaining(who: int) -> int:
        return int(sum(rows(site, f"SELECT count(*) FROM {t} WHERE participant_pseudonym = %s",
                                 (pseudonym(who),))[0][0] for t in ("wearable_features", "sample_features")))

    request = erasure(s, 1)
    send(site, producer, ERASURE, [request])
    # The bound is functional (the erasure deadline), not a speed measurement: fail if not purged by then.
    wait_for("the participant's rows gone from every feature table", lambda: remaining(1) == 0, ERASURE_BOUND_S, 0.01)
    assert remaining(2) == 600 + 5
    audit = rows(site, "SELECT request_id, participant_pseudonym, rows_deleted FROM erasure_audit")
    assert audit == [(uuid.UUID(request["request_id"]), pseudonym(1), 600 + 5)]

    # Late copies of the erased data (produced before the withdrawal, higher revisions) and a replayed request.
    send(site, producer, FEATURES, [feature(s, 1, m, revision=5, is_final=True) for m in range(10)]
         + [feature(s, 2, 0, revision=7)])
    send(site, producer, SAMPLE_FEATURES, [sample(s, 1, 0, revision=3)])
    send(site, producer, ERASURE, [request])
    wait_for("the late records to be consumed", lambda: caught_up(site), 30, 0.2)
    assert remaining(1) == 0
    assert wearable_state(site)[(pseudonym(2), "heart_rate", "MINUTE", BASE_MS, 1)][0] == 7
    assert rows(site, "SELECT count(*) FROM erasure_audit") == [(1,)]
    completed = [CODEC.decode(v) for _, _, v in read_all(site, AUDIT.name(s))]
    assert {(a["action"], a["participant_pseudonym"], str(a["audit_id"])) for a in completed} == {
        ("ERASURE_COMPLETED", pseudonym(1), erasure_audit_id(uuid.UUID(request["request_id"])))}
    assert all(a["at"].timestamp() * 1000 >= BASE_MS + MINUTE_MS for a in completed)


def test_record_the_database_refuses_is_isolated_and_dead_lettered(
        site: Settings, producer: DurableProducer, worker: StoreProcess) -> None:
    s = site.site_id
    with connect(site, autocommit=True) as conn:  # a constraint the decoder does not know about
        conn.execute("ALTER TABLE wearable_features ADD CONSTRAINT test_refuse CHECK (revision <> 999)")
    good = [feature(s, 1, m) for m in range(100)]
    poison = feature(s, 1, 500, revision=999)
    worker.start()
    send(site, producer, FEATURES, [*good[:50], poison, *good[50:]])
    wait_for("the batch", lambda: caught_up(site), 60, 0.1)
    assert wearable_state(site) == expected_state(good)
    dead = [CODEC.decode(v) for _, _, v in read_all(site, dlq(Stage.STORE).name(s))]
    assert [(d["reason"], CODEC.decode(d["original_value"])["revision"]) for d in dead] == [
        ("refused by the feature store (23514)", 999)]
    # The worker reports the edition and has stored the feature catalogue.
    assert "TimescaleDB edition: " in worker.log_text()
    assert rows(site, "SELECT count(*) FROM feature_catalogue")[0][0] > 0


def test_records_handed_over_in_process_are_written_and_their_dead_letters_carry_their_bytes(site: Settings) -> None:
    """A replay hands its feature records to the sink without encoding them: the good ones are stored, and what the
    checks or the database refuse is dead-lettered as the bytes the record would have had."""
    from clinstream.core.records import InRecord
    from clinstream.store.worker import StoreSink

    s = site.site_id
    with connect(site, autocommit=True) as conn:
        conn.execute("ALTER TABLE wearable_features ADD CONSTRAINT test_refuse CHECK (revision <> 999)")
    good = [feature(s, 1, m) for m in range(5)]
    refused, invalid = feature(s, 1, 500, revision=999), {**feature(s, 1, 501), "completeness": 1.5}
    topic = FEATURES.name(s)
    sink = StoreSink(site)
    try:
        sink.start()
        result = sink.process([InRecord(topic, -1, -1, None, b"", record=r) for r in [*good, refused, invalid]])
    finally:
        sink.close()
    assert wearable_state(site) == expected_state(good)
    dead = {CODEC.decode(o.value)["reason"]: CODEC.decode_plain(CODEC.decode(o.value)["original_value"])
            for o in result.out if o.topic == dlq(Stage.STORE).name(s)}
    assert dead == {"completeness outside [0, 1]": invalid, "refused by the feature store (23514)": refused}
