"""`clinstream worker features`: `FeatureProcessor` as a stage of the core stream host.

The host (`clinstream.core.stream_host`) reads PSEUDO_TELEMETRY, PSEUDO_BIOBANK and ERASURE (same partition
count, all keyed by the participant pseudonym, so a participant's blocks, events and erasure arrive in the same
partition number), admits each partition's records in gap-free offset order and makes every batch durable in
the host's one order: outputs, then state, then input offsets. After a crash, redelivered blocks are recognised
per window entry (device, sequence) and change nothing.

`FeatureTableState` is the processor's mapping of JSON-able dicts over the host's table; each key names the
participant's input partition (`features.state.partition_of`), which is the changelog partition it is written
to. The state's `flush` writes window/sample entries first and the partition watermarks last, so a durable
watermark implies durable entries.

Log lines carry counts and partitions only: never keys, values or pseudonyms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import orjson

from clinstream.core.config import Settings
from clinstream.core.constants import FEATURES_BATCH_MAX, FEATURES_BATCH_WITHIN_S
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import StageTraits, TableState
from clinstream.core.stream_host import app_id as host_app_id
from clinstream.core.stream_host import run as host_run
from clinstream.core.topics import Stage
from clinstream.features import STATE_TABLE
from clinstream.features.processor import FeatureProcessor, make_processor
from clinstream.features.state import WM_PREFIX, Entry, partition_of

STAGE = Stage.FEATURES.value
_BIG_JSON = b"J"  # prefix of values written by the stdlib (integers beyond 64 bits)

log = logging.getLogger("clinstream.features.worker")


def app_id(settings: Settings) -> str:
    """Faust app id and consumer group of this stage."""
    return host_app_id(settings, STAGE)


def dumps(entry: Entry) -> bytes:
    """Serialise a state entry (orjson; the stdlib, marked, when an integer exceeds 64 bits)."""
    try:
        return orjson.dumps(entry)
    except TypeError:
        return _BIG_JSON + json.dumps(entry, separators=(",", ":")).encode()


def loads(raw: bytes) -> Entry:
    """Inverse of `dumps`."""
    if raw[:1] == _BIG_JSON:
        return json.loads(raw[1:])  # type: ignore[no-any-return]
    return orjson.loads(raw)  # type: ignore[no-any-return]


def changelog_order(key: bytes, value: bytes | None) -> int:
    """Entries first, then the partition watermark, then deletions (finalised windows, erased entries).

    Any durable prefix is then safe to redeliver over: without the watermark, no window of the batch has been
    deleted yet, so a redelivered block finds its window and is a duplicate; a deletion is durable only after the
    watermark that made its window final (a redelivered block of it is late, its final already delivered). With
    deletions before the watermark, a redelivered block re-created a finalised window from scratch, and a second,
    different final record of that window followed.
    """
    if value is None:
        return 2
    return 1 if key.startswith(WM_PREFIX.encode()) else 0


class FeatureTableState(MutableMapping[str, Entry]):
    """The processor's state mapping over the host's table; each key goes to its participant's partition."""

    def __init__(self, table: TableState) -> None:
        self._table = table

    def __getitem__(self, key: str) -> Entry:
        raw = self._table.get(key.encode(), partition_of(key))
        if raw is None:
            raise KeyError(key)
        return loads(raw)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Fast path of `Mapping.get` without the KeyError round trip."""
        raw = self._table.get(key.encode(), partition_of(key))
        return default if raw is None else loads(raw)

    def __setitem__(self, key: str, entry: Entry) -> None:
        self._table.put(key.encode(), dumps(entry), partition_of(key))

    def __delitem__(self, key: str) -> None:
        self._table.delete(key.encode(), partition_of(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.encode() in self._table

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self._table.snapshot_keys())

    def __len__(self) -> int:
        return len(self._table)


class FeaturesStage:
    """The features stage as the host sees it."""

    traits = StageTraits(STAGE, STATE_TABLE, "Window accumulators, sample events, watermarks (pseudonymised keys "
                         "only).", FEATURES_BATCH_MAX, FEATURES_BATCH_WITHIN_S, changelog_order)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processor: FeatureProcessor | None = None
        self._topics = make_processor(settings, {}).input_topics

    @property
    def input_topics(self) -> Sequence[str]:
        """PSEUDO_TELEMETRY, PSEUDO_BIOBANK and ERASURE of the site."""
        return self._topics

    def bind(self, state: TableState) -> None:
        """Build the processor over the host's table."""
        self.processor = make_processor(self.settings, FeatureTableState(state))

    def _proc(self) -> FeatureProcessor:
        assert self.processor is not None, "bind() first"
        return self.processor

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """One batch through the processor."""
        return self._proc().process(records)

    def on_assignment_changed(self) -> None:
        """The deadline index is rebuilt from the keys on next use."""
        self._proc().reset_index()

    def report(self, result: BatchResult) -> None:
        """Log batches with dead letters, late blocks or erasures (counts only)."""
        if result.counters.get("dlq") or result.counters.get("late_blocks") or result.counters.get("erasures"):
            log.info("batch: %s", {k: v for k, v in sorted(result.counters.items())})


def run(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    host_run(settings, FeaturesStage(settings))
