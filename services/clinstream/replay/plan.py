"""What a replay reads and where it writes: offset ranges per input topic-partition, resolved once and stored.

A range is `[start, end)` in offsets. Ranges come from record timestamps (`--from` / `--to`, resolved with the
broker's offsets_for_times: the first record whose timestamp is at or after the instant) or from explicit
offsets (`--offsets [topic:]partition:start-end`, end exclusive, empty end = the current end). Without either,
a replay reads everything the topics hold now. The end is fixed when the plan is made (at most the high
watermark of that moment), so records that arrive during a replay are left to the live workers, and a resumed
run reads exactly the same records.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from clinstream.core.avro import subject_key
from clinstream.core.stream_host import partitions, watermarks
from clinstream.core.timeutil import now_ms, to_ms
from clinstream.replay.kafka_io import partition_of_key

_RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class PlanError(ValueError):
    """The requested range cannot be planned; the message is safe to print."""


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets [start, end) of one input topic-partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        """Offsets in the range (an upper bound of the records: compaction and control records leave gaps)."""
        return max(0, self.end - self.start)

    @property
    def tp(self) -> str:
        """`topic/partition`, the key of this range in checkpoints."""
        return f"{self.topic}/{self.partition}"


@dataclass(slots=True)
class ReplayPlan:
    """A resolved replay: stage, target and the exact input ranges."""

    run_id: str
    site_id: str
    stage: str
    version: int
    in_place: bool
    ranges: list[PartitionRange]
    participants: list[str] = field(default_factory=list)
    from_ms: int | None = None
    to_ms: int | None = None
    created_at_ms: int = 0
    workers: int = 1  # processes the run is split into (`shards`); each has its own checkpoint
    shard: int | None = None  # set on a shard's plan: which one (its ranges are that shard's)

    @property
    def group_id(self) -> str:
        """The replay's own consumer group (never one of the live groups)."""
        return replay_group(self.site_id, self.run_id)

    @property
    def estimate(self) -> int:
        """Upper bound of the records the replay reads."""
        return sum(r.count for r in self.ranges)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for the checkpoint."""
        doc = asdict(self)
        doc["ranges"] = [asdict(r) for r in self.ranges]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReplayPlan:
        """Inverse of `to_json`."""
        ranges = [PartitionRange(**r) for r in doc["ranges"]]
        return cls(**{**doc, "ranges": ranges})


def shards(plan: ReplayPlan) -> list[ReplayPlan]:
    """The plan split into `plan.workers` shards by partition number, each with every input topic's range of its
    partitions (a participant's records share one partition number in every input topic, and the processor's state
    is per partition, so shards share nothing). Partitions go, largest first, to the shard with the fewest records
    so far; the split depends only on the plan, so a resumed run has the same shards."""
    sizes: dict[int, int] = {}
    for r in plan.ranges:
        sizes[r.partition] = sizes.get(r.partition, 0) + r.count
    n = max(1, min(plan.workers, len(sizes)))
    load = [0] * n
    owner: dict[int, int] = {}
    for p in sorted(sizes, key=lambda q: (-sizes[q], q)):
        k = min(range(n), key=lambda i: (load[i], i))
        owner[p] = k
        load[k] += sizes[p]
    return [replace(plan, ranges=[r for r in plan.ranges if owner[r.partition] == k], shard=k) for k in range(n)]


def replay_group(site_id: str, run_id: str) -> str:
    """Consumer group of a replay run."""
    return f"clinstream-{site_id}-replay-{run_id}"


def new_run_id() -> str:
    """A fresh, sortable run id such as 20260101t120000z-3fa9."""
    return datetime.now(tz=UTC).strftime("%Y%m%dt%H%M%Sz") + "-" + secrets.token_hex(2)


def check_run_id(run_id: str) -> str:
    """A run id, validated (it becomes part of a group id and a directory name)."""
    if not _RUN_ID_RE.match(run_id):
        raise PlanError("run id: lower-case letters, digits and '-', at most 63 characters")
    return run_id


def parse_instant(text: str) -> int:
    """Epoch ms of an ISO-8601 instant with a time zone (e.g. 2026-01-01T00:00:00Z)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PlanError(f"not an ISO-8601 instant: {text!r}") from None
    if value.tzinfo is None:
        raise PlanError(f"instant without a time zone: {text!r} (add Z or +hh:mm)")
    return to_ms(value)


def parse_offsets(spec: str, default_topic: str) -> dict[tuple[str, int], tuple[int, int | None]]:
    """`[topic:]partition:start-end,...` -> {(topic, partition): (start, end or None)}; end is exclusive."""
    out: dict[tuple[str, int], tuple[int, int | None]] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) == 2:
            topic, p_text, r_text = default_topic, parts[0], parts[1]
        elif len(parts) == 3:
            topic, p_text, r_text = parts
        else:
            raise PlanError(f"offset range {item!r}: use [topic:]partition:start-end")
        m = re.fullmatch(r"(\d+)-(\d*)", r_text)
        if not p_text.isdigit() or m is None:
            raise PlanError(f"offset range {item!r}: use [topic:]partition:start-end")
        start, end = int(m.group(1)), int(m.group(2)) if m.group(2) else None
        if end is not None and end < start:
            raise PlanError(f"offset range {item!r}: end before start")
        out[(topic, int(p_text))] = (start, end)
    if not out:
        raise PlanError("empty --offsets")
    return out


def make_plan(consumer: Consumer, *, run_id: str, site_id: str, stage: str, topics: tuple[str, ...], version: int,
              in_place: bool, from_ms: int | None = None, to_ms: int | None = None,
              offsets: dict[tuple[str, int], tuple[int, int | None]] | None = None,
              participants: list[str] | None = None, key_partitioned: bool = True, workers: int = 1) -> ReplayPlan:
    """Resolve the input ranges now; `key_partitioned` narrows a participant filter to the participants' partitions
    (and allows `workers` > 1: the run split into processes by partition)."""
    if workers > 1 and not key_partitioned:
        raise PlanError(f"{stage} replays in one process: its input topics are not partitioned by participant alike")
    if offsets is not None and (from_ms is not None or to_ms is not None):
        raise PlanError("give either --from/--to or --offsets, not both")
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise PlanError("--to must be after --from")
    unknown = {t for t, _ in offsets or {}} - set(topics)
    if unknown:
        raise PlanError(f"--offsets names a topic this stage does not read: {sorted(unknown)}")
    ranges: list[PartitionRange] = []
    for topic in topics:
        parts = partitions(consumer, topic)
        if not parts:
            raise PlanError(f"topic {topic} does not exist (run `clinstream topics apply`)")
        wanted = set(parts)
        if participants and key_partitioned:
            wanted = {partition_of_key(subject_key(site_id, p), len(parts)) for p in participants}
        for p in sorted(wanted & set(parts)):
            lo, hi = watermarks(consumer, topic, p)
            if offsets is not None:
                if (topic, p) not in offsets:
                    continue
                start, end = offsets[(topic, p)]
                start, end = max(start, lo), min(hi if end is None else end, hi)
            else:
                start = _offset_at(consumer, topic, p, from_ms, lo, hi)
                end = _offset_at(consumer, topic, p, to_ms, hi, hi)
            if end > start:
                ranges.append(PartitionRange(topic, p, start, end))
    if offsets is not None and not ranges:
        raise PlanError("no records in the given offset ranges (beyond the end, or already deleted)")
    return ReplayPlan(run_id=run_id, site_id=site_id, stage=stage, version=version, in_place=in_place,
                      ranges=ranges, participants=sorted(participants or []), from_ms=from_ms, to_ms=to_ms,
                      created_at_ms=now_ms(), workers=workers)


def _offset_at(consumer: Consumer, topic: str, partition: int, at_ms: int | None, default: int, hi: int) -> int:
    """First offset whose record timestamp is >= at_ms (the high watermark if none), or `default` without a time."""
    if at_ms is None:
        return default
    found = consumer.offsets_for_times([TopicPartition(topic, partition, at_ms)], timeout=10)[0]
    return hi if found.offset < 0 else min(int(found.offset), hi)
