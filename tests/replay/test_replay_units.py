"""Pure logic of the replay tools: range parsing, checkpoints, pending-offset metadata, safe DLQ views."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.constants import REDRIVE_METADATA_MAX_CHARS
from clinstream.core.dead_letters import DeadLetterRecord, decode_envelope
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.topics import Stage
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.dlq import safe_view, summarise
from clinstream.replay.lag import group_kind
from clinstream.replay.plan import (
    PartitionRange,
    PlanError,
    ReplayPlan,
    check_run_id,
    make_plan,
    parse_instant,
    parse_offsets,
    shards,
)
from clinstream.replay.redrive import Pending, _PartitionRun, decode_pending, encode_pending


def test_parse_offsets_default_topic_explicit_topic_and_open_end() -> None:
    got = parse_offsets("0:10-20, other.topic:3:5-", "main.topic")
    assert got == {("main.topic", 0): (10, 20), ("other.topic", 3): (5, None)}
    for bad in ("0:20-10", "x:1-2", "0-10", "", "a:b:c:d"):
        with pytest.raises(PlanError):
            parse_offsets(bad, "t")


def test_parse_instant_needs_a_time_zone() -> None:
    assert parse_instant("2026-01-01T00:00:00Z") == 1_767_225_600_000
    assert parse_instant("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    with pytest.raises(PlanError):
        parse_instant("2026-01-01T00:00:00")
    with pytest.raises(PlanError):
        check_run_id("Bad Id")


@given(st.sets(st.integers(min_value=0, max_value=10**12), max_size=400))
def test_pending_offsets_survive_the_commit_metadata(offsets: set[int]) -> None:
    text = encode_pending(offsets) if offsets else ""
    assert len(text) <= REDRIVE_METADATA_MAX_CHARS
    pending = decode_pending(text)
    if text.startswith("v1:from="):  # degraded: everything from the smallest offset is re-examined
        assert pending.floor == min(offsets) and all(pending.contains(o) for o in offsets)
    else:
        assert pending.offsets == offsets


def test_partition_run_keeps_unreached_pending_offsets_and_adds_new_failures() -> None:
    run = _PartitionRun(committed=100, pending=Pending({5, 50, 70}))
    assert run.old.start(100) == 5
    run.last = 60  # examined up to 60: 5 and 50 were re-judged, 70 not reached yet
    run.new_pending.add(50)
    nxt, meta = run.metadata()
    assert nxt == 100 and decode_pending(meta).offsets == {50, 70}
    run.last = 120
    run.new_pending = {110}
    nxt, meta = run.metadata()
    assert nxt == 121 and decode_pending(meta).offsets == {110}


def test_checkpoint_round_trip_is_atomic_and_keeps_big_integers(tmp_path: Path) -> None:
    settings = Settings(site_id="t" + uuid.uuid4().hex[:8], data_dir=tmp_path)  # type: ignore[call-arg]
    plan = ReplayPlan("r1", settings.site_id, "features", 2, False, [PartitionRange("t.x", 0, 3, 9)],
                      participants=["p"], from_ms=1, to_ms=2, created_at_ms=3)
    cp = ckpt.Checkpoint(plan, {"t.x/0": 5}, {"records_read": 2}, {"w/0/p/hr/DAY/0": {"s2": 2**70}})
    path = ckpt.save(settings, cp)
    back = ckpt.load(settings, "r1")
    assert back is not None
    assert back.plan == plan and back.next_offsets == {"t.x/0": 5} and back.state["w/0/p/hr/DAY/0"]["s2"] == 2**70
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]  # no temporary files left
    assert ckpt.load(settings, "never") is None


@given(st.dictionaries(st.integers(0, 11), st.tuples(st.integers(0, 5000), st.integers(0, 50)), min_size=0,
                       max_size=12), st.integers(1, 6))
def test_shards_give_each_partition_of_every_topic_to_one_worker_and_balance_them(
        sizes: dict[int, tuple[int, int]], workers: int) -> None:
    ranges = [r for p, (a, b) in sorted(sizes.items())
              for r in (PartitionRange("tele", p, 10, 10 + a), PartitionRange("bio", p, 0, b)) if r.count]
    plan = ReplayPlan("r", "s", "features", 2, False, ranges, workers=workers)
    parts = shards(plan)
    partitions = {r.partition for r in ranges}
    assert len(parts) == max(1, min(workers, len(partitions)))
    assert [p.shard for p in parts] == list(range(len(parts)))
    assert sorted((r for p in parts for r in p.ranges), key=lambda r: (r.partition, r.topic)) == sorted(
        ranges, key=lambda r: (r.partition, r.topic))  # every range once
    owners = {r.partition: {p.shard for p in parts if r in p.ranges} for r in ranges}
    assert all(len(o) == 1 for o in owners.values())  # a partition's ranges of every topic in one shard
    assert all(p.ranges for p in parts) or not ranges
    loads = [sum(r.count for r in p.ranges) for p in parts]
    biggest = max((sum(r.count for r in ranges if r.partition == q) for q in partitions), default=0)
    assert max(loads) - min(loads) <= biggest  # greedy largest-first: within one partition of even
    assert shards(plan) == parts  # a resumed run gets the same shards


def test_a_shard_has_its_own_checkpoint_beside_the_runs(tmp_path: Path) -> None:
    settings = Settings(site_id="t" + uuid.uuid4().hex[:8], data_dir=tmp_path)  # type: ignore[call-arg]
    plan = ReplayPlan("r2", settings.site_id, "features", 2, False,
                      [PartitionRange("t.x", 0, 0, 9), PartitionRange("t.x", 1, 0, 4)], workers=2)
    ckpt.save(settings, ckpt.Checkpoint(plan, {"t.x/0": 0, "t.x/1": 0}))
    for part in shards(plan):
        ckpt.save(settings, ckpt.Checkpoint(part, {r.tp: r.end for r in part.ranges}, completed=True))
    run, first = ckpt.load(settings, "r2"), ckpt.load(settings, "r2", 0)
    assert run is not None and run.plan == plan and not run.completed
    assert first is not None and first.plan.shard == 0 and first.plan.ranges == [PartitionRange("t.x", 0, 0, 9)]
    assert sorted(p.name for p in ckpt.run_dir(settings, "r2").iterdir()) == [
        "checkpoint.json", "shard-0.json", "shard-1.json"]


def test_a_stage_not_partitioned_by_participant_replays_in_one_process() -> None:
    with pytest.raises(PlanError, match="one process"):
        make_plan(None, run_id="r", site_id="s", stage="pseudonymise", topics=("a",),  # type: ignore[arg-type]
                  version=0, in_place=True, key_partitioned=False, workers=2)


def _dead_letter(stage: Stage, value: bytes, reason: str, offset: int) -> DeadLetterRecord:
    codec = get_codec()
    _, env, headers = dead_letter(codec, site_id="site-t", stage=stage, rejection=Rejection(reason, "a.b"),
                                    original_value=value, original_key=b"P-000123-key", source_topic="src",
                                    source_partition=0, source_offset=offset, now_ms=1_767_225_600_000)
    return DeadLetterRecord(0, offset, 0, tuple((k, v) for k, v in headers or []), decode_envelope(codec, env), env)


def test_show_never_prints_the_original_bytes_or_key_unless_asked() -> None:
    rec = _dead_letter(Stage.PSEUDONYMISE, b"Testa Synthetica P-000123", "bad", 7)
    view = safe_view(rec, Stage.PSEUDONYMISE, show_payload=False)
    assert "P-000123" not in str(view) and "Testa" not in str(view)
    assert view["reason"] == "bad" and view["source"] == "src:0:7"
    full = safe_view(rec, Stage.PSEUDONYMISE, show_payload=True)
    assert "P-000123" in full["original_value_escaped"] and "original_decoded" not in full  # raw zone: bytes only


def test_summary_groups_by_reason_and_counts_distinct_sources() -> None:
    recs = [_dead_letter(Stage.FEATURES, b"x", "r1", 1), _dead_letter(Stage.FEATURES, b"x", "r1", 1),
            _dead_letter(Stage.FEATURES, b"y", "r2", 2)]
    groups = summarise(recs, redriven={(0, 2)})
    assert [(g.reason, g.records, g.sources, g.redriven) for g in groups] == [("r1", 2, 1, 0), ("r2", 1, 1, 1)]


def test_group_kinds() -> None:
    assert group_kind("s", "clinstream-s-features") == "live"
    assert group_kind("s", "clinstream-s-replay-20260101t000000z-ab12") == "replay"
    assert group_kind("s", "clinstream-s-redrive-features") == "redrive"
    assert group_kind("s", "clinstream-s-dlq-reader") == "tool"
