"""Prometheus metrics of the stream workers: batches, records, dead letters, windows, late data, store rows.

Labels are only a stage, a reason or a kind taken from the code's fixed vocabulary, never a pseudonym, an id or a
value; a dead-letter reason is reduced to its first plain words (`reason_label`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import Counter, Histogram

from clinstream.core.constants import DLQ_HEADER_REASON, DLQ_HEADER_STAGE, METRICS_BATCH_SECONDS_BUCKETS
from clinstream.core.constants import METRICS_REASON_MAX_WORDS as MAX_WORDS
from clinstream.core.records import OutRecord
from clinstream.core.topics import Stage

BATCHES = Counter("clinstream_stage_batches_total", "Batches a stream stage made durable.", ["stage"])
RECORDS = Counter("clinstream_stage_records_total", "Input records a stream stage processed.", ["stage"])
BATCH_SECONDS = Histogram("clinstream_stage_batch_seconds", "Time of one batch: process, produce, commit.",
                          ["stage"], buckets=METRICS_BATCH_SECONDS_BUCKETS)
OUTCOMES = Counter("clinstream_stage_outcomes_total",
                   "A stage's named batch counters (blocks, readings, consent changes, erasures, ...).",
                   ["stage", "kind"])
DEAD_LETTERS = Counter("clinstream_dlq_records_total", "Records sent to a stage's dead-letter topic.",
                       ["stage", "reason"])
WINDOWS = Counter("clinstream_features_windows_emitted_total",
                  "Feature records emitted by the features stage (kind: provisional or final window).", ["kind"])
LATE = Counter("clinstream_features_late_records_total",
               "Late data at the features stage (kind: block sent whole to the late topic, or window missed).",
               ["kind"])
STORE_ROWS = Counter("clinstream_store_rows_written_total",
                     "Feature-store rows (kind: wearable or sample written; unchanged: already stored; coalesced: "
                     "superseded within the batch).",
                     ["kind"])
ERASURES = Counter("clinstream_store_erasures_total", "Erasure requests the feature store carried out.")

# features counters (features/processor.py, wearable_processor.py) -> (metric, kind)
_FEATURE_COUNTERS: Mapping[str, tuple[Counter, str]] = {
    "final_windows": (WINDOWS, "final"),
    "late_blocks": (LATE, "block"),
    "late_windows": (LATE, "window"),
}
_WORD = re.compile(r"[a-z]+(?:_[a-z]+)*")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def reason_label(reason: str) -> str:
    """A dead-letter reason as a label value: its first plain words before any detail, no digits or quoted text."""
    head = _QUOTED.sub(" ", re.split(r"[:(\[{]", reason, maxsplit=1)[0].lower())
    words = [w for w in head.split() if _WORD.fullmatch(w)][:MAX_WORDS]
    return "_".join(words) or "unspecified"


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def observe_dead_letters(stage: str, reasons: Iterable[str]) -> None:
    """Count dead letters of a stage by reason."""
    for reason in reasons:
        DEAD_LETTERS.labels(stage=stage, reason=reason_label(reason)).inc()


def observe_batch(stage: str, records: int, seconds: float, counters: Mapping[str, int],
                  out: Sequence[OutRecord]) -> None:
    """Count one durable batch of a hosted stream stage: its records, time, counters and dead letters."""
    BATCHES.labels(stage=stage).inc()
    RECORDS.labels(stage=stage).inc(records)
    BATCH_SECONDS.labels(stage=stage).observe(seconds)
    for name, n in counters.items():
        OUTCOMES.labels(stage=stage, kind=name).inc(n)
        if stage == Stage.FEATURES and name in _FEATURE_COUNTERS:
            metric, kind = _FEATURE_COUNTERS[name]
            metric.labels(kind=kind).inc(n)
    if stage == Stage.FEATURES:
        WINDOWS.labels(kind="provisional").inc(max(0, counters.get("feature_records", 0)
                                                    - counters.get("final_windows", 0)))
    for o in out:
        reason = _header(o.headers, DLQ_HEADER_REASON)
        if reason is not None:
            DEAD_LETTERS.labels(stage=_header(o.headers, DLQ_HEADER_STAGE) or stage,
                                reason=reason_label(reason)).inc()


def observe_store_batch(records: int, seconds: float, rows: Mapping[str, int], erasures: int,
                        reasons: Iterable[str]) -> None:
    """Count one committed batch of the store worker: records, time, rows by kind, erasures, dead letters."""
    BATCHES.labels(stage=Stage.STORE.value).inc()
    RECORDS.labels(stage=Stage.STORE.value).inc(records)
    BATCH_SECONDS.labels(stage=Stage.STORE.value).observe(seconds)
    for kind, n in rows.items():
        STORE_ROWS.labels(kind=kind).inc(n)
    ERASURES.inc(erasures)
    observe_dead_letters(Stage.STORE.value, reasons)
