"""The pure feature batch processor (facade): pseudonymised blocks and events in; feature, late and DLQ records out.

Per batch and input partition:

1. decode every record; bad ones go to the features DLQ with their original bytes; erasure requests purge the
   participant's whole state and leave a tombstone, so that records of an erased participant are dropped;
2. telemetry is folded into event-time windows by `wearable_processor.WearableWindows`;
3. biobank events are recorded per sample and re-derived by `biobank_processor.BiobankSamples`;
4. windows whose deadline the watermark has reached are emitted with is_final=true and deleted, every touched
   window and sample is emitted once with its latest value; state writes are coalesced and the watermark is
   written last.

Determinism: values come from exact integer accumulators, and computed_at is the latest received_at (recorded_at
for samples) folded in, not the wall clock, so reprocessing the same input gives byte-identical records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, MutableMapping, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from clinstream.core.avro import Codec, DecodeError, get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.topics import (
    ERASURE,
    FEATURES,
    LATE_TELEMETRY,
    PSEUDO_BIOBANK,
    PSEUDO_TELEMETRY,
    SAMPLE_FEATURES,
    Stage,
    dlq,
)
from clinstream.features import catalogue as cat
from clinstream.features.biobank_processor import BiobankSamples
from clinstream.features.block_batch import BlockBatchReader
from clinstream.features.blocks import Block, BlockError
from clinstream.features.config import FeatureSettings, get_feature_settings
from clinstream.features.partition_work import PartitionWork
from clinstream.features.state import WINDOW_PREFIX, Entry, FeatureState, partition_of, tombstone_key
from clinstream.features.wearable_processor import FINALISE_RANK, WearableWindows
from clinstream.features.windows import deadlines


class FeatureProcessor:
    """Pure batch processor of the features stage; all state lives in the injected mapping."""

    def __init__(self, site_id: str, state: MutableMapping[str, Entry], settings: FeatureSettings | None = None,
                 version: int = cat.FEATURE_VERSION, codec: Codec | None = None, coalesce_blocks: bool = True,
                 emit_open: bool = True, keep_records: bool = False) -> None:
        cat.definitions_version(version)  # refuses a version below the first
        self.site_id = site_id
        self.coalesce_blocks = coalesce_blocks  # False: every block's partials merged alone (the reference in tests)
        # False (a replay): a window is emitted once, when final or by `emit_open_windows` at the end of the run,
        # instead of after every batch that touched it; nobody watches a replay's rows grow
        self.emit_open = emit_open
        # True (a replay, whose store sink runs in the same process): wearable feature records are handed over as
        # records (`OutRecord.record`), not encoded
        self.keep_records = keep_records
        self.settings = settings or get_feature_settings()
        self.version = version
        self.codec = codec or get_codec()
        self.deadline_ms = deadlines(self.settings)
        self.state = FeatureState(state, self.deadline_ms, FINALISE_RANK)
        self.topic_telemetry = PSEUDO_TELEMETRY.name(site_id)
        self.topic_biobank = PSEUDO_BIOBANK.name(site_id)
        self.topic_erasure = ERASURE.name(site_id)
        self.topic_features = FEATURES.name(site_id)
        self.topic_samples = SAMPLE_FEATURES.name(site_id)
        self.topic_late = LATE_TELEMETRY.name(site_id)
        self.topic_dlq = dlq(Stage.FEATURES).name(site_id)
        self.future_skew_ms = self.settings.max_future_skew_s * 1000
        self.block_reader = BlockBatchReader(self.codec, self.future_skew_ms)
        self._keys: dict[str, bytes] = {}

    def key_of(self, pseudonym: str) -> bytes:
        """The output key (SubjectKey of site and pseudonym), cached."""
        key = self._keys.get(pseudonym)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[pseudonym] = subject_key(self.site_id, pseudonym)
        return key

    @property
    def input_topics(self) -> tuple[str, str, str]:
        """The topics this processor reads."""
        return self.topic_telemetry, self.topic_biobank, self.topic_erasure

    def reset_index(self) -> None:
        """Forget in-memory indexes (call after the host's partition assignment changed)."""
        self.state.reset_index()

    def process(self, batch: Sequence[InRecord]) -> BatchResult:
        """Process one batch; records of each partition are handled in arrival order."""
        result = BatchResult()
        by_partition: dict[int, list[InRecord]] = defaultdict(list)
        for rec in batch:
            by_partition[rec.partition].append(rec)
        for p in sorted(by_partition):
            _Batch(self, p, result).run(by_partition[p])
            self.state.flush()
        return result

    def emit_open_windows(self, chunk: int) -> Iterator[BatchResult]:
        """Every window still open in the state, emitted with its latest value (is_final=false), partition by partition
        in key order, at most `chunk` windows per result: the end of a run whose processor does not `emit_open` after
        each batch. The results are made as they are asked for, so only one chunk's records are held at a time."""
        ordered = sorted((partition_of(key), key) for key in self.state.mapping if key.startswith(WINDOW_PREFIX))
        for i in range(0, len(ordered), chunk):
            result = BatchResult()
            for p, members in groupby(ordered[i:i + chunk], key=itemgetter(0)):
                WearableWindows(self, p, result).emit_latest([key for _, key in members])
                self.state.flush()  # nothing changed; the reads' cache is cleared
            yield result

    # --- record builders -----------------------------------------------------------------------------------
    def dead_letter(self, rec: InRecord, reason: str, field_path: str | None = None) -> OutRecord:
        """A DLQ record of an input (deterministic: failed_at is the input's timestamp)."""
        key, value, headers = dead_letter(
            self.codec, site_id=self.site_id, stage=Stage.FEATURES, rejection=Rejection(reason, field_path),
            original_value=rec.value, original_key=rec.key, source_topic=rec.topic, source_partition=rec.partition,
            source_offset=rec.offset, now_ms=rec.timestamp_ms)
        return OutRecord(self.topic_dlq, key, value, headers)


class _Batch(PartitionWork):
    """The work on one partition's records of one batch: decode, erase, then the wearable and biobank halves."""

    proc: FeatureProcessor

    def __init__(self, proc: FeatureProcessor, p: int, result: BatchResult) -> None:
        super().__init__(proc, p, result)
        self.wearables = WearableWindows(proc, p, result)
        self.samples = BiobankSamples(proc, p, result)
        self._erased: dict[str, bool] = {}

    def run(self, records: list[InRecord]) -> None:
        blocks: list[tuple[InRecord, Block]] = []
        events: list[tuple[InRecord, dict[str, Any]]] = []
        erasures: list[str] = []
        telemetry = self.proc.topic_telemetry
        decoded = iter(self.proc.block_reader.read([rec.value for rec in records if rec.topic == telemetry]))
        for rec in records:
            if rec.topic == telemetry:
                block = self._take_block(rec, next(decoded))
                if block is not None:
                    blocks.append((rec, block))
            elif rec.topic == self.proc.topic_biobank:
                event = self._decode(rec, PSEUDO_BIOBANK.value_schema)
                if event is not None:
                    events.append((rec, event))
            elif rec.topic == self.proc.topic_erasure:
                request = self._decode(rec, ERASURE.value_schema)
                if request is not None:
                    erasures.append(request["participant_pseudonym"])
            else:
                self.reject(rec, "unexpected input topic")
        for pseudonym in erasures:
            self._erase(pseudonym)
        self.wearables.fold_blocks([(r, b) for r, b in blocks if not self._is_erased(b.pseudonym, "blocks")])
        self.samples.record_events(
            [(r, e) for r, e in events if not self._is_erased(e["participant_pseudonym"], "events")])
        self.wearables.finalise_and_emit()
        self.samples.emit()

    # --- input ---------------------------------------------------------------------------------------------
    def _decode(self, rec: InRecord, schema: str) -> dict[str, Any] | None:
        try:
            if self.proc.codec.writer_name(rec.value) != schema:
                raise DecodeError(f"not a {schema.rsplit('.', 1)[-1]}")
            return self.proc.codec.decode(rec.value)
        except DecodeError as exc:
            self.reject(rec, str(exc))
            return None

    def _take_block(self, rec: InRecord, decoded: Block | BlockError | DecodeError) -> Block | None:
        """The decoded block of a telemetry record, or None after sending the record to the DLQ."""
        if isinstance(decoded, BlockError):
            self.reject(rec, decoded.reason, decoded.field_path)
            return None
        if isinstance(decoded, DecodeError):
            self.reject(rec, str(decoded))
            return None
        block = decoded
        self.result.count("blocks")
        self.result.count("readings", block.size)
        return block

    def _is_erased(self, pseudonym: str, what: str) -> bool:
        erased = self._erased.get(pseudonym)
        if erased is None:
            erased = self._erased[pseudonym] = self.state.get(tombstone_key(self.p, pseudonym)) is not None
        if erased:
            self.result.count(f"erased_{what}_dropped")
        return erased

    def _erase(self, pseudonym: str) -> None:
        for key in list(self.state.keys_of(pseudonym)):
            if not key.startswith("x/"):
                self.state.delete(key)
        self.state.put(tombstone_key(self.p, pseudonym), {"erased": True})
        self._erased[pseudonym] = True
        self.wearables.forget(pseudonym)
        self.result.count("erasures")


def make_processor(settings: Settings, state: MutableMapping[str, Entry], version: int | None = None,
                   feature_settings: FeatureSettings | None = None) -> FeatureProcessor:
    """The processor of a site over a state mapping (the host's table in the worker, a dict in tests and replay).

    Without an explicit version it computes the site's configured live version (CLINSTREAM_FEATURES_VERSION).
    """
    fs = feature_settings or get_feature_settings()
    return FeatureProcessor(settings.site_id, state, fs, fs.version if version is None else version)

