"""Re-driving dead letters through their stage after a fix: a per-stage registry and the tracked re-drive run.

Judging: each stage's `Redriver` re-runs the record's original bytes through the stage's CURRENT logic in this
process (the code and settings deployed now). A record that passes is handed back to the stream; one that fails
again stays where it is in the DLQ (it is not written again) and is re-examined by the next re-drive.

Handing back: for the stream stages (pseudonymise, features, store) the original key and bytes go back to the
topic they were read from, so the live worker, with its real state (consent table, feature windows, dedup
records), processes them; a processor run outside the worker on a scratch state would fork that state. The
verdict is the stage's own check, so deploy the fix to the live worker before re-driving. For ingest, whose
input was an HTTP request, the re-driver validates and encodes like the gateway (current CLINSTREAM_INGEST_*
settings, the device and receipt instant recorded on the dead letter) and produces to the raw topic; the ingest
package provides `clinstream.ingest.redrive.make_redriver(settings) -> Redriver` over the interface in
`clinstream.core.dead_letters` (other stages call `register_redriver`). Re-driven records carry a
`clinstream.redriven-from` header. A verdict may also say
that the stream already holds the record (`duplicate`: nothing is sent, the dead letter counts as done). A
re-driver may have a `delivered()` method, called once the records of the verdicts judged since its last call
were acknowledged (before the progress commit), and a `close()` method, called at the end of the run.

Tracking (exactly once into the stream, in effect): the run's progress is the committed offset of the group
`clinstream-<site>-redrive-<stage>` on the DLQ topic, committed after the batch's records were acknowledged
(acks=all). The commit's metadata lists the offsets below it that are still pending (failed again, or left
out by a reason filter), so the next run re-examines exactly those plus the new dead letters and never
resends a record it handed back. If the list outgrows the metadata limit it degrades to "everything from the
smallest pending offset" (a later run may then resend some records; every consumer deduplicates by block,
event or request id). A crash between the acknowledgement and the commit resends that one batch (same rule).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from clinstream.core.config import Settings
from clinstream.core.constants import REDRIVE_BATCH_MAX, REDRIVE_METADATA_MAX_CHARS
from clinstream.core.dead_letters import DeadLetterRecord, Redriver
from clinstream.core.kafka import DurableProducer, Message
from clinstream.core.stream_host import partitions, tool_consumer, watermarks
from clinstream.core.topics import Stage, dlq
from clinstream.replay.dlq import read_dead_letters
from clinstream.replay.specs import spec_of


def redriver_for(settings: Settings, stage: Stage) -> Redriver:
    """The stage's re-driver, from its stage spec."""
    return spec_of(stage).redriver(settings)


def _hook(redriver: Redriver, name: str) -> Callable[[], None] | None:
    fn = getattr(redriver, name, None)
    return fn if callable(fn) else None


# --- pending offsets in the commit metadata ----------------------------------------------------------------
@dataclass(slots=True)
class Pending:
    """Offsets below the committed one that still need a re-drive: a set, plus 'all from `floor`' if degraded."""

    offsets: set[int] = field(default_factory=set)
    floor: int | None = None

    def contains(self, offset: int) -> bool:
        """Whether an offset (below the committed one) is still pending."""
        return offset in self.offsets or (self.floor is not None and offset >= self.floor)

    def start(self, committed: int) -> int:
        """Where the next run starts reading."""
        return min([committed, *self.offsets, *([self.floor] if self.floor is not None else [])])


def encode_pending(offsets: set[int]) -> str:
    """`v1:a-b,c,...` (ranges of consecutive offsets), or `v1:from=N` if that is too long."""
    parts: list[str] = []
    ordered = sorted(offsets)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    text = "v1:" + ",".join(parts)
    if len(text) > REDRIVE_METADATA_MAX_CHARS:
        return f"v1:from={ordered[0]}"
    return text


def decode_pending(metadata: str | None) -> Pending:
    """Inverse of `encode_pending` (unknown or empty metadata: nothing pending)."""
    if not metadata or not metadata.startswith("v1:"):
        return Pending()
    body = metadata[3:]
    if body.startswith("from="):
        return Pending(floor=int(body[5:]))
    out: set[int] = set()
    for part in filter(None, body.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return Pending(out)


def redrive_group(settings: Settings, stage: Stage) -> str:
    """The consumer group whose committed offsets track a stage's re-drive."""
    return f"clinstream-{settings.site_id}-redrive-{stage.value}"


def redrive_progress(settings: Settings, stage: Stage) -> dict[int, tuple[int, Pending]]:
    """Per DLQ partition: (committed offset or -1, pending offsets)."""
    topic = dlq(stage).name(settings.site_id)
    consumer = tool_consumer(settings, redrive_group(settings, stage))
    try:
        tps = [TopicPartition(topic, p) for p in partitions(consumer, topic)]
        out: dict[int, tuple[int, Pending]] = {}
        for tp in consumer.committed(tps, timeout=10) if tps else []:
            out[tp.partition] = (tp.offset if tp.offset >= 0 else -1, decode_pending(tp.metadata))
        return out
    finally:
        consumer.close()


def redriven_positions(progress: dict[int, tuple[int, Pending]],
                       records: list[DeadLetterRecord]) -> set[tuple[int, int]]:
    """Positions of the dead letters a re-drive handed back already."""
    done: set[tuple[int, int]] = set()
    for rec in records:
        committed, pending = progress.get(rec.partition, (-1, Pending()))
        if rec.offset < committed and not pending.contains(rec.offset):
            done.add((rec.partition, rec.offset))
    return done


@dataclass(slots=True)
class RedriveReport:
    """What one re-drive run did."""

    examined: int = 0
    redriven: int = 0
    duplicates: int = 0  # pass, but already in the stream (nothing sent)
    still_failing: int = 0
    left_out: int = 0  # not matching the reason filter
    already_redriven: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    targets: Counter[str] = field(default_factory=Counter)


class _PartitionRun:
    def __init__(self, committed: int, pending: Pending) -> None:
        self.committed = committed
        self.old = pending
        self.new_pending: set[int] = set()
        self.last = -1  # last examined offset

    def metadata(self) -> tuple[int, str]:
        keep = {o for o in self.old.offsets if o > self.last} | self.new_pending
        if self.old.floor is not None:
            keep |= set(range(max(self.old.floor, self.last + 1), self.committed))
        return max(self.committed, self.last + 1), encode_pending(keep) if keep else ""


def redrive(settings: Settings, stage: Stage, *, reason: str | None = None, dry_run: bool = False,
            batch_max: int = REDRIVE_BATCH_MAX, redriver: Redriver | None = None,
            progress: Callable[[int], None] | None = None) -> RedriveReport:
    """Re-drive the stage's dead letters not handed back before; see the module doc."""
    judge = redriver or redriver_for(settings, stage)
    delivered = _hook(judge, "delivered")
    topic = dlq(stage).name(settings.site_id)
    report = RedriveReport()
    consumer = tool_consumer(settings, redrive_group(settings, stage))
    producer = None if dry_run else DurableProducer(settings)
    try:
        runs: dict[int, _PartitionRun] = {}
        starts: dict[int, int] = {}
        parts = partitions(consumer, topic)
        for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10) if parts else []:
            lo, _ = watermarks(consumer, topic, tp.partition)
            committed = tp.offset if tp.offset >= 0 else lo
            runs[tp.partition] = _PartitionRun(committed, decode_pending(tp.metadata))
            starts[tp.partition] = max(lo, runs[tp.partition].old.start(committed))
        if parts and not dry_run:
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in parts])  # commits need a member
        batch: list[tuple[str, Message]] = []
        touched: set[int] = set()

        def flush() -> None:
            if dry_run or not (batch or touched):
                batch.clear()
                touched.clear()
                return
            assert producer is not None
            by_topic: dict[str, list[Message]] = {}
            for t, msg in batch:
                by_topic.setdefault(t, []).append(msg)
            for t, msgs in by_topic.items():
                producer.send(t, msgs, settings.produce_timeout_s)
            if delivered is not None:
                delivered()
            offsets = []
            for p in touched:
                nxt, meta = runs[p].metadata()
                offsets.append(TopicPartition(topic, p, nxt, metadata=meta))  # "": nothing pending (None is refused)
            consumer.commit(offsets=offsets, asynchronous=False)
            batch.clear()
            touched.clear()

        for rec in read_dead_letters(settings, stage, starts=starts):
            run = runs[rec.partition]
            run.last = rec.offset
            touched.add(rec.partition)
            if rec.offset < run.committed and not run.old.contains(rec.offset):
                report.already_redriven += 1
                continue
            report.examined += 1
            if reason is not None and rec.reason != reason:
                run.new_pending.add(rec.offset)
                report.left_out += 1
                continue
            verdict = judge.judge(rec)
            if verdict.ok:
                batch.extend(verdict.messages)
                if verdict.duplicate:
                    report.duplicates += 1
                else:
                    report.redriven += 1
                for t, _ in verdict.messages:
                    report.targets[t] += 1
            else:
                assert verdict.rejection is not None
                run.new_pending.add(rec.offset)
                report.still_failing += 1
                report.failures[verdict.rejection.reason] += 1
            if progress is not None:
                progress(1)
            if report.examined % batch_max == 0:
                flush()
        flush()
        return report
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
        close = _hook(judge, "close") if redriver is None else None
        if close is not None:
            close()
