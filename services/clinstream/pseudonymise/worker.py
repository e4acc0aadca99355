"""`clinstream worker pseudonymise`: `PseudonymiseProcessor` as a stage of the core stream host.

The host (`clinstream.core.stream_host`) reads both raw topics (same partition count, both keyed by the raw
participant key), so a participant's consent events and data arrive in the same partition number and see one
consent table. Per batch, records are grouped by partition; each topic-partition keeps its offset order and the
two topics are merged by record timestamp (`order_for_processing`).

Consent state is written through `ConsentTableState` with the partition of the input records being processed,
so a participant's state sits in the changelog partition co-partitioned with that participant's raw records.
The host makes each batch durable in its one order: outputs (pseudonymised records, erasure requests, audit
records) first, then the consent changelog, then the input offsets. So a withdrawal whose consent state is
durable has its ErasureRequest durable too: redelivery after a crash never meets an already-inactive state
without the erasure having been emitted.

Log lines carry counts, partitions and key versions only: never keys, values, pseudonyms or secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

from clinstream.core.config import Settings
from clinstream.core.constants import PSEUDONYMISE_BATCH_MAX, PSEUDONYMISE_BATCH_WITHIN_S
from clinstream.core.logging import configure_logging
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import StageTraits, TableState
from clinstream.core.stream_host import app_id as host_app_id
from clinstream.core.stream_host import run as host_run
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY, Stage
from clinstream.pseudonymise import CONSENT_TABLE
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import KeyRingError, KeyRingSource
from clinstream.pseudonymise.metrics import observe
from clinstream.pseudonymise.processor import PseudonymiseProcessor, order_for_processing

STAGE = Stage.PSEUDONYMISE.value

log = logging.getLogger("clinstream.pseudonymise.worker")
_DECODED_MAX = 200_000  # consent entries kept decoded (about 400 bytes each)


def app_id(settings: Settings) -> str:
    """Faust app id and consumer group of this stage."""
    return host_app_id(settings, STAGE)


class ConsentTableState(MutableMapping[str, ConsentEntry]):
    """The processor's consent mapping over the host's table; writes go to the partition being processed."""

    def __init__(self, table: TableState) -> None:
        self._table = table
        self.partition = 0
        self._decoded: dict[str, tuple[bytes, ConsentEntry]] = {}  # key -> (stored bytes, their entry)

    def __getitem__(self, key: str) -> ConsentEntry:
        entry: ConsentEntry | None = self.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The entry of a key; decoded once per stored value (entries are immutable; a restored or changed value is
        another bytes object and is decoded again)."""
        raw = self._table.get(key.encode())
        if raw is None:
            return default
        cached = self._decoded.get(key)
        if cached is not None and cached[0] is raw:
            return cached[1]
        if len(self._decoded) >= _DECODED_MAX:
            self._decoded.clear()
        entry = ConsentEntry.from_bytes(raw)
        self._decoded[key] = (raw, entry)
        return entry

    def __setitem__(self, key: str, entry: ConsentEntry) -> None:
        self._table.put(key.encode(), entry.to_bytes(), self.partition)

    def __delitem__(self, key: str) -> None:
        self._table.delete(key.encode(), self.partition)

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self._table.snapshot_keys())

    def __len__(self) -> int:
        return len(self._table)


def process_by_partition(processor: PseudonymiseProcessor, state: ConsentTableState,
                         records: Sequence[InRecord]) -> list[tuple[int, BatchResult]]:
    """Run the processor once per partition (offset order per topic), pointing table writes at that partition."""
    results: list[tuple[int, BatchResult]] = []
    for partition, ordered in order_for_processing(list(records)).items():
        state.partition = partition
        results.append((partition, processor.process(ordered)))
    return results


class PseudonymiseStage:
    """The pseudonymise stage as the host sees it."""

    traits = StageTraits(STAGE, CONSENT_TABLE, "Consent state per participant pseudonym (no identifiers).",
                         PSEUDONYMISE_BATCH_MAX, PSEUDONYMISE_BATCH_WITHIN_S)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key_source = KeyRingSource(settings)
        self.processor: PseudonymiseProcessor | None = None
        self.state: ConsentTableState | None = None
        self._ring = self.key_source.current()  # fails early (exit 2) on a missing or bad key ring

    @property
    def input_topics(self) -> Sequence[str]:
        """RAW_TELEMETRY and RAW_BIOBANK of the site."""
        return RAW_TELEMETRY.name(self.settings.site_id), RAW_BIOBANK.name(self.settings.site_id)

    def bind(self, state: TableState) -> None:
        """Build the processor over the host's table."""
        self.state = ConsentTableState(state)
        self.processor = PseudonymiseProcessor(self.settings.site_id, self._ring, self.state)
        log.info("pseudonymise key version %d", self._ring.active)

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """One batch, partition by partition, with the current key ring; the partitions' results merged."""
        assert self.processor is not None and self.state is not None, "bind() first"
        ring = self.key_source.current()
        if ring.active != self.processor.key_ring.active or ring.versions != self.processor.key_ring.versions:
            log.info("using key version %d for new output", ring.active)
        self.processor.set_key_ring(ring)
        merged = BatchResult()
        for partition, result in process_by_partition(self.processor, self.state, records):
            merged.out.extend(result.out)
            for name, n in result.counters.items():
                merged.count(name, n)
            dropped = {k: v for k, v in result.counters.items() if k.startswith("dropped")}
            if dropped:
                log.warning("partition %d: records not forwarded: %s", partition, dropped)
        return merged

    def on_assignment_changed(self) -> None:
        """Nothing is indexed in memory."""

    def report(self, result: BatchResult) -> None:
        """Count the batch in the stage's metrics."""
        observe(self.settings.site_id, result.counters)


def run(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    try:
        stage = PseudonymiseStage(settings)
    except KeyRingError as exc:
        configure_logging(STAGE)
        log.critical("cannot start: %s", exc)
        raise SystemExit(2) from None
    host_run(settings, stage)
