"""`clinstream replay --stage features` on the real broker and TimescaleDB, beside a running live pipeline.

One site for the module: a day of simulated data (3 participants, 26 h, all measurement kinds) processed live
into version 1 by the features processor under the stage's live consumer group and the real store worker;
then replays into further versions through the CLI.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from features_factories import Generated, generate, stored_view
from features_kafka import produce
from replay_helpers import (
    LiveFeatures,
    StoreThread,
    clinstream,
    committed,
    end_offsets,
    feature_rows,
    key_of,
    live_features_group,
    pipeline_idle,
    scalar,
    start_clinstream,
)

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import PSEUDO_BIOBANK, PSEUDO_TELEMETRY
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.kafka_io import partition_of_key
from clinstream.store.worker import group_id as store_group
from condition_wait import wait_for

pytestmark = pytest.mark.integration


@dataclass
class Site:
    settings: Settings
    data_dir: Path
    data: Generated
    live: LiveFeatures
    replayed: dict[int, str]


def _send(settings: Settings, blocks: list) -> None:  # type: ignore[type-arg]
    produce(settings, PSEUDO_TELEMETRY.name(settings.site_id),
            [(key_of(settings, b.participant), b.value) for b in blocks])


def _site_over_two_partitions() -> Settings:
    """A fresh site whose participants' records lie in two partitions at least (the tests of a replay in worker
    processes need two shards); a random site id spreads three participants over one partition 1 time in 16."""
    while True:
        settings = Settings(site_id="t" + uuid.uuid4().hex[:10])  # type: ignore[call-arg]
        people = generate(n_participants=3, hours=1, site_id=settings.site_id).participants
        if len({partition_of_key(key_of(settings, p), settings.topic_partitions) for p in people}) >= 2:
            return settings


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from clinstream.core.topic_admin import apply_topics, delete_site_topics
    from clinstream.store.migrate import migrate

    settings = _site_over_two_partitions()
    data_dir = tmp_path_factory.mktemp("replay")
    apply_topics(settings)
    migrate(settings)
    live, store = LiveFeatures(settings), StoreThread(settings)
    try:
        data = generate(n_participants=3, hours=26, hr_block_s=300, seed=11, site_id=settings.site_id)
        live.start()
        store.start()
        _send(settings, data.blocks)
        wait_for("live pipeline to catch up", lambda: pipeline_idle(settings), timeout_s=90)
        assert live.error is None, live.error
        yield Site(settings, data_dir, data, live, {})
    finally:
        live.stop()
        store.stop()
        if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
            delete_site_topics(settings)
            with connect(settings, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def _replay(site: Site, version: int, *extra: str, run_id: str | None = None) -> str:
    run_id = run_id or f"v{version}-{uuid.uuid4().hex[:6]}"
    res = clinstream(site.settings, site.data_dir, "replay", "--stage", "features", "--version", str(version),
                     "--run-id", run_id, *extra)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    site.replayed[version] = res.stdout
    return res.stdout


def test_dry_run_states_ranges_and_targets_and_reads_nothing(site: Site) -> None:
    s = site.settings
    res = clinstream(s, site.data_dir, "replay", "--stage", "features", "--version", "9", "--dry-run",
                     "--run-id", "dry")
    assert res.returncode == 0, res.stderr
    ends = end_offsets(s, [PSEUDO_TELEMETRY.name(s.site_id)])
    assert f"{sum(ends.values()):,}" in res.stdout  # the estimate: every record of the range
    for (_, p), hi in ends.items():
        if hi:
            assert f"│ {p} " in res.stdout and f" {hi} " in res.stdout
    assert "version 9 beside the live version 1" in res.stdout
    assert "clinstream-" + s.site_id + "-replay-dry" in res.stdout
    assert ckpt.load(s.model_copy(update={"data_dir": site.data_dir}), "dry") is None  # nothing started
    assert all(o < 0 for o in committed(s, f"clinstream-{s.site_id}-replay-dry",
                                        [PSEUDO_TELEMETRY.name(s.site_id)]).values())
    assert scalar(s, "SELECT count(*) FROM wearable_features WHERE version = 9") == 0


def test_replay_into_version_2_reprocesses_history_while_live_processing_goes_on(site: Site) -> None:
    s = site.settings
    topics = [PSEUDO_TELEMETRY.name(s.site_id), PSEUDO_BIOBANK.name(s.site_id)]
    live_before = committed(s, live_features_group(s), topics)
    # new live data for a new participant arrives during the replay (one partition only)
    extra = generate(n_participants=4, hours=2, hr_block_s=300, seed=5, site_id=s.site_id)
    newcomer = extra.participants[3]
    new_blocks = [b for b in extra.blocks if b.participant == newcomer]
    new_partition = partition_of_key(key_of(s, newcomer), s.topic_partitions)
    proc = start_clinstream(s, site.data_dir, site.data_dir / "replay-v2.log", "replay", "--stage", "features",
                            "--version", "2", "--run-id", "v2", "--max-rate", "100", "--batch-size", "100")
    try:
        wait_for("the replay to start reading", lambda: (ckpt.load(s.model_copy(update={"data_dir": site.data_dir}),
                                                                   "v2") is not None), timeout_s=30)
        _send(s, new_blocks)
        wait_for("live rows of the newcomer", lambda: scalar(
            s, "SELECT count(*) FROM wearable_features WHERE version = 1 AND participant_pseudonym = %s",
            (newcomer,)), timeout_s=30)
        assert proc.poll() is None, "the replay should still be running while live data is processed"
        assert proc.wait(120) == 0, (site.data_dir / "replay-v2.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for("live pipeline to catch up", lambda: pipeline_idle(s), timeout_s=60)
    # the live group moved only by the live records: exactly the newcomer's blocks, in its partition
    live_after = committed(s, live_features_group(s), topics)
    for tp, before in live_before.items():
        grew = max(live_after[tp], 0) - max(before, 0)
        expected = len(new_blocks) if tp == (topics[0], new_partition) else 0
        assert grew == expected, (tp, before, live_after[tp])
    # the replay's own group stopped at the plan's end (the newcomer's records are not in it)
    plan = ckpt.load(s.model_copy(update={"data_dir": site.data_dir}), "v2")
    assert plan is not None and plan.completed
    replay_offsets = committed(s, plan.plan.group_id, [topics[0]])
    assert {f"{t}/{p}": o for (t, p), o in replay_offsets.items() if o >= 0} == plan.next_offsets
    # the replay computed version 2's definitions over exactly the history: its rows are what an in-process
    # version-2 run over the same records stores (version 2 changed definitions, so it is not version 1)
    v2 = feature_rows(s, 2)
    assert len(v2) > 1000
    want = stored_view(site.data.blocks, s.site_id, s.topic_partitions, 2, site.data.participants)
    got = {(r[0], r[1], r[2], int(r[3].timestamp() * 1000)): r for r in v2}
    assert set(got) == set(want)
    for key, rec in want.items():
        assert got[key][6] == pytest.approx(rec["values"]), key
        assert (got[key][7], got[key][8]) == (pytest.approx(rec["completeness"]), rec["is_final"]), key
    assert newcomer not in {r[0] for r in v2}
    site.replayed[2] = "done"


def test_replaying_the_same_range_twice_changes_nothing(site: Site) -> None:
    s = site.settings
    if 2 not in site.replayed:
        _replay(site, 2, run_id="v2")
    first = ckpt.load(s.model_copy(update={"data_dir": site.data_dir}), "v2")
    assert first is not None
    same_range = ",".join(f"{r.topic}:{r.partition}:{r.start}-{r.end}" for r in first.plan.ranges)
    before = feature_rows(s, 2, with_stored_at=True)
    _replay(site, 2, "--offsets", same_range, run_id="v2-again")
    assert feature_rows(s, 2, with_stored_at=True) == before  # not even stored_at moved: no row rewritten
    cp = ckpt.load(s.model_copy(update={"data_dir": site.data_dir}), "v2-again")
    assert cp is not None and cp.completed
    assert cp.counters["feature_records_delivered"] > 0 and cp.counters.get("features_written", 0) == 0


def test_interrupted_replay_resumed_gives_the_same_result(site: Site) -> None:
    s = site.settings
    if 2 not in site.replayed:
        _replay(site, 2, run_id="v2")
    local = s.model_copy(update={"data_dir": site.data_dir})
    log = site.data_dir / "replay-v3.log"
    proc = start_clinstream(s, site.data_dir, log, "replay", "--stage", "features", "--version", "3",
                            "--run-id", "v3", "--batch-size", "50", "--checkpoint-every", "0", "--max-rate", "200")

    def progressed() -> bool:
        cp = ckpt.load(local, "v3")
        return cp is not None and cp.counters.get("records_read", 0) >= 150

    try:
        wait_for("a checkpoint after some batches", progressed, timeout_s=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    cp = ckpt.load(local, "v3")
    assert cp is not None and not cp.completed and cp.state
    total = sum(r.count for r in cp.plan.ranges)
    assert 0 < cp.counters["records_read"] < total
    res = clinstream(s, site.data_dir, "replay", "--resume", "v3")
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    final = ckpt.load(local, "v3")
    assert final is not None and final.completed and final.state is None
    assert final.counters["records_read"] >= total  # the batches after the checkpoint were read again
    # version 3 computes with the newest definitions (version 2's): the same rows as the uninterrupted replay into
    # version 2 for its participants (version 3's range may also hold the newcomer sent during that replay)
    v2 = feature_rows(s, 2)
    people = {r[0] for r in v2}
    assert v2 and [r for r in feature_rows(s, 3) if r[0] in people] == v2
    again = clinstream(s, site.data_dir, "replay", "--resume", "v3")
    assert again.returncode == 0 and "already complete" in again.stdout


def test_participant_filter_reads_only_their_partition_and_writes_only_their_rows(site: Site) -> None:
    s = site.settings
    if 2 not in site.replayed:
        _replay(site, 2, run_id="v2")
    who = site.data.participants[1]
    out = _replay(site, 4, "--participant", who)
    partition = partition_of_key(key_of(s, who), s.topic_partitions)
    cp = ckpt.load(s.model_copy(update={"data_dir": site.data_dir}), next(
        line.split()[-1] for line in out.splitlines() if line.startswith("run id:")))
    assert cp is not None and {r.partition for r in cp.plan.ranges} == {partition}
    assert feature_rows(s, 4) == [r for r in feature_rows(s, 2) if r[0] == who]  # version 2's definitions


def test_a_replay_in_worker_processes_survives_kills_and_writes_what_one_process_writes(site: Site) -> None:
    """Two workers, one per share of the partitions. A worker SIGKILLed: the other checkpoints and stops, the run
    exits 1, resumable. A resumed run whose parent is SIGKILLed: its workers checkpoint and stop by themselves.
    The last resume completes: every shard's offsets and counters in the run's checkpoint, the rows of one process."""
    import psutil

    s = site.settings
    if 2 not in site.replayed:
        _replay(site, 2, run_id="v2")
    local = s.model_copy(update={"data_dir": site.data_dir})
    log = site.data_dir / "replay-v5.log"
    slow = ("--batch-size", "20", "--checkpoint-every", "0", "--max-rate", "200")

    def read(k: int) -> int:
        cp = ckpt.load(local, "v5", k)
        return cp.counters.get("records_read", 0) if cp is not None else 0

    def gone(procs: list[psutil.Process]) -> bool:
        return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in procs)

    proc = start_clinstream(s, site.data_dir, log, "replay", "--stage", "features", "--version", "5",
                            "--run-id", "v5", "--workers", "2", *slow)
    try:
        wait_for("both workers to checkpoint batches", lambda: read(0) >= 40 and read(1) >= 40, timeout_s=60)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        workers[0].kill()
        assert proc.wait(30) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "resume with: clinstream replay --resume v5" in log.read_text()
    wait_for("the other worker to leave", lambda: gone(workers), timeout_s=30)
    run = ckpt.load(local, "v5")
    assert run is not None and not run.completed
    assert 0 < run.counters["records_read"] < run.plan.estimate
    assert not any(cp is not None and cp.completed for cp in (ckpt.load(local, "v5", k) for k in (0, 1)))  # stopped
    # a resume whose parent dies: the workers it forked stop after their batch in hand, checkpointed
    proc = start_clinstream(s, site.data_dir, log, "replay", "--resume", "v5", *slow)
    try:
        wait_for("the resumed workers to start", lambda: len(psutil.Process(proc.pid).children()) == 2,
                 timeout_s=30)
        orphans = psutil.Process(proc.pid).children()
        proc.kill()
        proc.wait(10)
        wait_for("the orphaned workers to stop", lambda: gone(orphans), timeout_s=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = ckpt.load(local, "v5")
    assert run is not None and not run.completed
    assert not all(cp is not None and cp.completed for cp in (ckpt.load(local, "v5", k) for k in (0, 1)))
    res = clinstream(s, site.data_dir, "replay", "--resume", "v5")
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    assert "workers:         2 processes by partition" in res.stdout
    run = ckpt.load(local, "v5")
    parts = [ckpt.load(local, "v5", k) for k in (0, 1)]
    assert run is not None and run.completed and run.plan.workers == 2
    assert all(cp is not None and cp.completed for cp in parts)
    owned = [{r.partition for r in cp.plan.ranges} for cp in parts if cp is not None]
    assert owned[0] and owned[1] and not owned[0] & owned[1]  # each worker had partitions of its own
    assert run.next_offsets == {r.tp: r.end for r in run.plan.ranges}
    for name in ("records_read", "readings", "feature_records_delivered"):
        assert run.counters[name] == sum(cp.counters[name] for cp in parts if cp is not None) > 0
    assert run.counters["records_read"] >= run.plan.estimate  # batches after a checkpoint were read again
    v2 = feature_rows(s, 2)
    people = {r[0] for r in v2}
    assert v2 and [r for r in feature_rows(s, 5) if r[0] in people] == v2


def test_promote_switches_the_current_views_and_prints_the_rollback(site: Site) -> None:
    s = site.settings
    if 2 not in site.replayed:
        _replay(site, 2, run_id="v2")
    res = clinstream(s, site.data_dir, "features", "promote", "--version", "2")
    assert res.returncode == 0, res.stderr
    assert "before: version 1" in res.stdout
    assert "clinstream features promote --version 1" in res.stdout
    assert scalar(s, "SELECT count(DISTINCT version) FROM wearable_features_current") == 1
    assert scalar(s, "SELECT min(version) FROM wearable_features_current") == 2
    res = clinstream(s, site.data_dir, "features", "promote", "--version", "77")
    assert res.returncode == 1 and "no stored features" in res.stdout
    back = clinstream(s, site.data_dir, "features", "promote", "--version", "1")
    assert back.returncode == 0 and scalar(s, "SELECT version FROM active_version") == 1


def test_lag_lists_live_and_replay_groups_and_freshness(site: Site) -> None:
    s = site.settings
    from replay_helpers import clinstream_json

    wait_for("live pipeline idle", lambda: pipeline_idle(s), timeout_s=60)
    doc = clinstream_json(s, site.data_dir, "lag")
    kinds = {g["group"]: g["kind"] for g in doc["groups"]}
    assert kinds[live_features_group(s)] == "live"
    assert kinds[store_group(s)] == "live"
    assert all(g["lag"] == 0 for g in doc["groups"] if g["group"] == live_features_group(s))
    fresh = {(f["feature_set"], f["version"]): f for f in doc["freshness"]}
    assert fresh[("heart_rate", 1)]["active"] is True
    assert fresh[("heart_rate", 1)]["age_s"] is not None and fresh[("heart_rate", 1)]["age_s"] < 600
    if 2 in site.replayed:
        assert "replay" in kinds.values()
        assert ("heart_rate", 2) in fresh and fresh[("heart_rate", 2)]["active"] is False


def test_a_replay_honours_every_erasure_requested_until_now_through_the_processor(kafka_site: Settings) -> None:
    """The erasure topic is read at the start; the processor's own erasure purges and tombstones the participant."""
    from features_factories import erasure, in_records

    from clinstream.core.avro import subject_key
    from clinstream.core.topics import ERASURE
    from clinstream.replay.engine import make_adapter

    site = kafka_site.site_id
    data = generate(n_participants=2, hours=2, seed=5, site_id=site)
    erased, kept = data.participants
    produce(kafka_site, ERASURE.name(site), [(subject_key(site, erased), erasure(erased, site_id=site))])
    stage = make_adapter(kafka_site, "features", 2, ())
    stage.prepare(None)
    records = [r for who in data.participants for r in in_records(
        [b for b in data.blocks if b.participant == who], site_id=site,
        partition=partition_of_key(subject_key(site, who), kafka_site.topic_partitions))]  # as the producer placed it
    result = stage.process(records)
    end = [o for chunk in stage.finish() for o in chunk.out]
    who = {o.record["participant_pseudonym"] for o in [*result.out, *end] if o.record}
    assert who == {kept}
    assert result.counters["erased_blocks_dropped"] == sum(b.participant == erased for b in data.blocks)
