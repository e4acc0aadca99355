"""The pipeline-health page's data: lag, throughput, freshness, DLQ, consent and late-data figures from samples."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from clinstream.console.sampler import Sample, SeriesKey, stage_of
from clinstream.core.topics import LATE_TELEMETRY, Stage, dlq

DLQ_METRIC = "clinstream_dlq_records_total"  # labels: stage, reason
CONSENT_METRIC = "clinstream_pseudonymise_events_total"  # label outcome: consent_granted, consent_withdrawn
CONSENT_OUTCOMES = ("consent_granted", "consent_withdrawn")
ERASURE_METRIC = "clinstream_store_erasures_total"


@dataclass(frozen=True, slots=True)
class LagRow:
    """Lag and throughput of one stage on one topic-partition."""

    stage: str
    topic: str
    partition: int
    committed: int
    end: int
    lag: int
    per_s: float | None  # committed records per second since the previous sample; None with only one sample


def lag_rows(site_id: str, samples: list[Sample]) -> list[LagRow]:
    """The newest sample's lags with throughput against the sample before it."""
    if not samples:
        return []
    last = samples[-1]
    before = samples[-2] if len(samples) > 1 else None
    previous = {(p.group, p.topic, p.partition): p.committed for p in before.lags} if before else {}
    rows = []
    for p in last.lags:
        prev = previous.get((p.group, p.topic, p.partition))
        rate = None if before is None or prev is None else max(0, p.committed - prev) / max(last.at - before.at, 1e-3)
        rows.append(LagRow(stage_of(site_id, p.group), p.topic, p.partition, p.committed, p.end, p.lag, rate))
    return rows


def _series(samples: list[Sample], pick: Any) -> tuple[list[str], list[float | None]]:
    times = [datetime.fromtimestamp(s.at, UTC).isoformat() for s in samples]
    return times, [pick(s) for s in samples]


def throughput_series(site_id: str, samples: list[Sample]) -> dict[str, tuple[list[str], list[float]]]:
    """Records per second per stage between consecutive samples (all partitions summed)."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    for before, after in pairwise(samples):
        prev = {(p.group, p.topic, p.partition): p.committed for p in before.lags}
        per_stage: dict[str, int] = defaultdict(int)
        for p in after.lags:
            if (key := (p.group, p.topic, p.partition)) in prev:
                per_stage[stage_of(site_id, p.group)] += max(0, p.committed - prev[key])
        for stage, n in per_stage.items():
            times, values = out.setdefault(stage, ([], []))
            times.append(datetime.fromtimestamp(after.at, UTC).isoformat())
            values.append(n / max(after.at - before.at, 1e-3))
    return out


def metric_total(sample: Sample, name: str, **labels: str) -> float | None:
    """Sum of a metric's series matching the labels, or None when no endpoint exposes it."""
    found = [v for (n, ls), v in sample.metrics.items() if n == name and labels.items() <= dict(ls).items()]
    return sum(found) if found else None


def metric_by_label(sample: Sample, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """A metric summed by the given labels."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (n, ls), v in sample.metrics.items():
        if n == name:
            d = dict(ls)
            out[tuple(d.get(k, "") for k in label_names)] += v
    return dict(out)


def dlq_by_stage(site_id: str, sample: Sample) -> dict[str, int]:
    """Dead letters retained in each stage's DLQ topic (from offsets; no record is read)."""
    return {stage.value: sample.topic_records.get(dlq(stage).name(site_id), 0) for stage in Stage}


def late_records(site_id: str, sample: Sample) -> int | None:
    """Records in the late-telemetry topic, or None when the topic does not exist."""
    return sample.topic_records.get(LATE_TELEMETRY.name(site_id))


def counter_series(samples: list[Sample], name: str, **labels: str) -> tuple[list[str], list[float | None]]:
    """A counter's value in every sample (None where no endpoint exposed it)."""
    return _series(samples, lambda s: metric_total(s, name, **labels))


def late_series(site_id: str, samples: list[Sample]) -> tuple[list[str], list[float | None]]:
    """The late-telemetry topic's record count in every sample."""
    return _series(samples, lambda s: late_records(site_id, s))


def has_metric(samples: list[Sample], name: str) -> bool:
    """Whether any sample saw the metric."""
    return any(n == name for s in samples for (n, _) in s.metrics)


def keys_of(samples: list[Sample]) -> set[SeriesKey]:
    """Every metric series seen."""
    return {k for s in samples for k in s.metrics}
