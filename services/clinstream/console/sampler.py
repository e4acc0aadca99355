"""Samples broker offsets and Prometheus endpoints in the background, so pages answer from memory.

Each sample keeps consumer-group offsets per stage and partition (throughput is the committed-offset delta between
two samples), record counts of the DLQ and late-data topics (offsets only: no record is ever read), and the
scraped counters of the configured metrics endpoints (consent changes, DLQ reasons, ...).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec
from prometheus_client.parser import text_string_to_metric_families

from clinstream.core.config import Settings
from clinstream.core.topic_admin import admin_client
from clinstream.core.topics import LATE_TELEMETRY, Stage, dlq
from clinstream.replay.lag import PartitionLag, group_lags

log = logging.getLogger(__name__)
_KEEP = 360  # samples kept (one hour at the default 10 s interval)
_TIMEOUT_S = 5.0

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # metric sample name, sorted labels


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the site: when, group offsets, topic record counts and scraped metric values."""

    at: float
    lags: tuple[PartitionLag, ...]
    topic_records: dict[str, int]  # topic -> records currently retained (end - start offsets)
    metrics: dict[SeriesKey, float]
    errors: tuple[str, ...] = ()


def stage_of(site_id: str, group: str) -> str:
    """The stage a consumer group runs: the part of its id after `clinstream-<site>-`."""
    prefix = f"clinstream-{site_id}-"
    return group[len(prefix):] if group.startswith(prefix) else group


def parse_metrics(text: str) -> dict[SeriesKey, float]:
    """Prometheus text format into {(sample name, labels): value}."""
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + float(s.value)
    return out


def _topic_records(settings: Settings) -> dict[str, int]:
    names = [dlq(stage).name(settings.site_id) for stage in Stage] + [LATE_TELEMETRY.name(settings.site_id)]
    admin = admin_client(settings)
    meta = admin.list_topics(timeout=_TIMEOUT_S)
    tps = [TopicPartition(n, p) for n in names if n in meta.topics for p in meta.topics[n].partitions]
    if not tps:
        return {}
    counts: dict[str, int] = dict.fromkeys({tp.topic for tp in tps}, 0)
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
                              request_timeout=_TIMEOUT_S)
    starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps},  # type: ignore[no-untyped-call]
                                request_timeout=_TIMEOUT_S)
    for tp, fut in ends.items():
        counts[tp.topic] += int(fut.result().offset) - int(starts[tp].result().offset)
    return counts


@dataclass
class Sampler:
    """A daemon thread taking a Sample every `interval_s`; pages read `samples()`."""

    settings: Settings
    metrics_urls: Sequence[str]
    interval_s: float = 10.0
    read_lags: Callable[[Settings], list[PartitionLag]] = group_lags
    _samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=_KEEP))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> Sample:
        """Read the broker and the metrics endpoints once and keep the result."""
        errors: list[str] = []
        lags: list[PartitionLag] = []
        records: dict[str, int] = {}
        try:
            lags = self.read_lags(self.settings)
            records = _topic_records(self.settings)
        except Exception as exc:  # the broker may be away; the page says so
            errors.append(f"broker: {type(exc).__name__}: {exc}")
        metrics: dict[SeriesKey, float] = {}
        for url in self.metrics_urls:
            try:
                response = httpx.get(url, timeout=_TIMEOUT_S)
                response.raise_for_status()
                for key, value in parse_metrics(response.text).items():
                    metrics[key] = metrics.get(key, 0.0) + value
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"metrics {url}: {type(exc).__name__}")
        sample = Sample(time.time(), tuple(lags), records, metrics, tuple(errors))
        with self._lock:
            self._samples.append(sample)
        return sample

    def samples(self) -> list[Sample]:
        """Every kept sample, oldest first."""
        with self._lock:
            return list(self._samples)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.take()
            except Exception:
                log.exception("console sampler failed; next try in %.0f s", self.interval_s)

    def start(self) -> None:
        """Take a first sample now, then keep sampling in a daemon thread."""
        self.take()
        threading.Thread(target=self._run, name="console-sampler", daemon=True).start()

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()
