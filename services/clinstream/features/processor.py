"""The pure feature batch processor: pseudonymised blocks and events in; feature, late and DLQ records out.

Per batch and input partition:

1. decode every record; bad ones go to the features DLQ with their original bytes; erasure requests purge the
   participant's whole state and leave a tombstone, so that records of an erased participant are dropped;
2. telemetry: every block's samples are split by window with numpy (`partials`), then folded block by block, in
   arrival order, into window entries. Per (block, window entry): a block already recorded in the entry (same
   device pseudonym and sequence number) is a duplicate and changes nothing, but the window is emitted again; a
   window whose end + horizon is at or before the watermark (max event time seen in the partition before this
   block) is final and refuses the data; otherwise the partial is merged, the sequence recorded and the revision
   incremented, atomically in one entry. A block refused by all its windows goes unchanged to LATE_TELEMETRY;
3. biobank: events are recorded per sample (deduplicated by event id) and the sample and its descendants are
   re-derived;
4. windows whose deadline the watermark has reached are emitted with is_final=true (same revision) and deleted;
5. each touched window or sample is emitted once per batch with its latest value; state writes are coalesced and
   the watermark is written last.

Revisions: a heart_rate row's revision is the number of distinct blocks folded into it; the row of any other set
adds the heart-rate blocks of the same window (they define its completeness), so every change of a row's value or
completeness raises its revision. A stored row is replaced when (revision, is_final) is greater.

Determinism: values come from exact integer accumulators, and computed_at is the latest received_at (recorded_at
for samples) folded in, not the wall clock, so reprocessing the same input gives byte-identical records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

from clinstream.core.avro import Codec, DecodeError, get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.timeutil import DAY_MS
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
from clinstream.features import accumulators, ranges
from clinstream.features import catalogue as cat
from clinstream.features.biobank import compact_event, sample_features
from clinstream.features.blocks import Block, BlockError, decode_block
from clinstream.features.config import FeatureSettings, get_feature_settings
from clinstream.features.partials import PARTIALS, SCALE, Partial
from clinstream.features.state import (
    Entry,
    FeatureState,
    baseline_key,
    parse_window_key,
    sample_key,
    tombstone_key,
    window_key,
)
from clinstream.features.windows import LENGTH_MS, WindowKind, deadlines

_MAX_LINEAGE_DEPTH = 8
_FINALISE_ORDER = {s: i for i, s in enumerate((*[s for s in cat.WEARABLE_SETS if s != cat.HEART_RATE],
                                              cat.HEART_RATE))}


class FeatureProcessor:
    """Pure batch processor of the features stage; all state lives in the injected mapping."""

    def __init__(self, site_id: str, state: MutableMapping[str, Entry], settings: FeatureSettings | None = None,
                 version: int = cat.FEATURE_VERSION, codec: Codec | None = None) -> None:
        self.site_id = site_id
        self.settings = settings or get_feature_settings()
        self.version = version
        self.codec = codec or get_codec()
        self.deadline_ms = deadlines(self.settings)
        self.state = FeatureState(state, self.deadline_ms)
        self.topic_telemetry = PSEUDO_TELEMETRY.name(site_id)
        self.topic_biobank = PSEUDO_BIOBANK.name(site_id)
        self.topic_erasure = ERASURE.name(site_id)
        self.topic_features = FEATURES.name(site_id)
        self.topic_samples = SAMPLE_FEATURES.name(site_id)
        self.topic_late = LATE_TELEMETRY.name(site_id)
        self.topic_dlq = dlq(Stage.FEATURES).name(site_id)
        self.future_skew_ms = self.settings.max_future_skew_s * 1000
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

    # --- record builders -----------------------------------------------------------------------------------
    def dead_letter(self, rec: InRecord, reason: str, field_path: str | None = None) -> OutRecord:
        """A DLQ record of an input (deterministic: failed_at is the input's timestamp)."""
        key, value, headers = dead_letter(
            self.codec, site_id=self.site_id, stage=Stage.FEATURES, rejection=Rejection(reason, field_path),
            original_value=rec.value, original_key=rec.key, source_topic=rec.topic, source_partition=rec.partition,
            source_offset=rec.offset, now_ms=rec.timestamp_ms)
        return OutRecord(self.topic_dlq, key, value, headers)


class _Batch:
    """The work on one partition's records of one batch."""

    def __init__(self, proc: FeatureProcessor, p: int, result: BatchResult) -> None:
        self.proc = proc
        self.p = p
        self.result = result
        self.state = proc.state
        self.settings = proc.settings
        self.touched: dict[str, None] = {}  # window keys to emit, in first-touch order
        self.hr_windows: dict[tuple[str, WindowKind, int], None] = {}
        self.touched_samples: dict[tuple[str, str], None] = {}
        self._erased: dict[str, bool] = {}

    def run(self, records: list[InRecord]) -> None:
        blocks: list[tuple[InRecord, Block]] = []
        events: list[tuple[InRecord, dict[str, Any]]] = []
        erasures: list[str] = []
        for rec in records:
            if rec.topic == self.proc.topic_telemetry:
                block = self._decode_block(rec)
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
                self.result.out.append(self.proc.dead_letter(rec, "unexpected input topic"))
                self.result.count("dlq")
        for pseudonym in erasures:
            self._erase(pseudonym)
        self._telemetry([(r, b) for r, b in blocks if not self._is_erased(b.pseudonym, "blocks")])
        self._biobank([(r, e) for r, e in events if not self._is_erased(e["participant_pseudonym"], "events")])
        self._finalise_and_emit()

    # --- input ---------------------------------------------------------------------------------------------
    def _decode(self, rec: InRecord, schema: str) -> dict[str, Any] | None:
        try:
            if self.proc.codec.writer_name(rec.value) != schema:
                raise DecodeError(f"not a {schema.rsplit('.', 1)[-1]}")
            return self.proc.codec.decode(rec.value)
        except DecodeError as exc:
            self.result.out.append(self.proc.dead_letter(rec, str(exc)))
            self.result.count("dlq")
            return None

    def _decode_block(self, rec: InRecord) -> Block | None:
        try:
            block = decode_block(self.proc.codec, rec.value, self.proc.future_skew_ms)
        except BlockError as exc:
            self.result.out.append(self.proc.dead_letter(rec, exc.reason, exc.field_path))
            self.result.count("dlq")
            return None
        except DecodeError as exc:
            self.result.out.append(self.proc.dead_letter(rec, str(exc)))
            self.result.count("dlq")
            return None
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
        self.touched = {k: None for k in self.touched if parse_window_key(k)[1] != pseudonym}
        self.result.count("erasures")

    # --- telemetry -----------------------------------------------------------------------------------------
    def _telemetry(self, blocks: list[tuple[InRecord, Block]]) -> None:
        if not blocks:
            return
        parts: list[list[Partial]] = [[] for _ in blocks]
        by_measurement: dict[str, list[tuple[int, Block]]] = defaultdict(list)
        for i, (_, block) in enumerate(blocks):
            by_measurement[block.measurement].append((i, block))
        for measurement, members in by_measurement.items():
            fn = PARTIALS.get(measurement)
            if fn is not None:
                for part in fn(members, self.settings):
                    parts[part.block].append(part)
        wm0 = self.state.watermark(self.p)
        latest = np.array([b.max_event_ms if b.max_event_ms is not None else wm0 for _, b in blocks], dtype=np.int64)
        wm_before = np.maximum.accumulate(np.concatenate(([wm0], latest)))[:-1].tolist()
        for i, (rec, block) in enumerate(blocks):
            if not parts[i]:
                self.result.count("blocks_without_features")
                continue
            accepted = duplicate = late = 0
            for part in parts[i]:
                outcome = self._fold(block, part, wm_before[i])
                accepted += outcome == "accepted"
                duplicate += outcome == "duplicate"
                late += outcome == "late"
            if accepted == 0 and duplicate == 0:
                self.result.out.append(OutRecord(self.proc.topic_late, rec.key, rec.value))
                self.result.count("late_blocks")
            elif late:
                self.result.count("late_windows", late)
            if duplicate and not accepted:
                self.result.count("duplicate_blocks")
        self.state.set_watermark(self.p, int(latest.max()))

    def _fold(self, block: Block, part: Partial, watermark: int) -> str:
        key = window_key(self.p, block.pseudonym, part.feature_set, part.kind, part.start)
        entry = self.state.get(key)
        if entry is not None and ranges.contains(entry["d"].get(block.device, []), block.sequence):
            self._touch(key, block.pseudonym, part)
            return "duplicate"
        if part.start + self._deadline_of(part.kind) <= watermark:
            return "late"
        if entry is None:
            entry = {"r": 0, "ca": 0, "o": block.utc_offset_min if part.kind is WindowKind.LOCAL_DAY else 0,
                     "d": {}, "a": {}}
        accumulators.merge(part.feature_set, entry["a"], part.acc)
        ranges.add(entry["d"].setdefault(block.device, []), block.sequence)
        entry["r"] += 1
        entry["ca"] = max(entry["ca"], block.received_ms)
        self.state.put(key, entry)
        self._touch(key, block.pseudonym, part)
        return "accepted"

    def _deadline_of(self, kind: WindowKind) -> int:
        return self.proc.deadline_ms[kind]

    def _touch(self, key: str, pseudonym: str, part: Partial) -> None:
        self.touched[key] = None
        if part.feature_set == cat.HEART_RATE:
            self.hr_windows[(pseudonym, part.kind, part.start)] = None

    # --- biobank -------------------------------------------------------------------------------------------
    def _biobank(self, events: list[tuple[InRecord, dict[str, Any]]]) -> None:
        for rec, event in events:
            try:
                compact = compact_event(event)
            except (KeyError, TypeError, ValueError):
                self.result.out.append(self.proc.dead_letter(rec, "invalid biobank payload", "payload"))
                self.result.count("dlq")
                continue
            if compact is None:
                self.result.count("events_without_features")
                continue
            sample, ev = compact
            pseudonym = event["participant_pseudonym"]
            key = sample_key(self.p, pseudonym, sample)
            entry = self.state.get(key) or {"ev": {}, "ch": []}
            event_id = str(event["event_id"])
            self.touched_samples[(pseudonym, sample)] = None
            if event_id in entry["ev"]:
                self.result.count("duplicate_events")
                continue
            entry["ev"][event_id] = ev
            self.state.put(key, entry)
            self.result.count("events")
            parent = ev.get("par")
            if parent and parent != sample:
                pkey = sample_key(self.p, pseudonym, parent)
                pentry = self.state.get(pkey) or {"ev": {}, "ch": []}
                if sample not in pentry["ch"]:
                    pentry["ch"] = sorted([*pentry["ch"], sample])
                    self.state.put(pkey, pentry)

    def _descendants(self, pseudonym: str, sample: str) -> list[str]:
        out: list[str] = []
        frontier = [sample]
        for _ in range(_MAX_LINEAGE_DEPTH):
            nxt: list[str] = []
            for s in frontier:
                entry = self.state.get(sample_key(self.p, pseudonym, s))
                for child in entry["ch"] if entry else []:
                    if child not in out and child != sample:
                        out.append(child)
                        nxt.append(child)
            frontier = nxt
        return out

    def _sample_record(self, pseudonym: str, sample: str) -> OutRecord | None:
        entry = self.state.get(sample_key(self.p, pseudonym, sample))
        if not entry or not entry["ev"]:
            return None
        ancestors: list[dict[str, Entry]] = []
        seen = {sample}
        parent = sample_features(entry["ev"], [])["parent_sample_pseudonym"]
        while parent and parent not in seen and len(ancestors) < _MAX_LINEAGE_DEPTH:
            seen.add(parent)
            pentry = self.state.get(sample_key(self.p, pseudonym, parent))
            if not pentry:
                break
            ancestors.append(pentry["ev"])
            parent = sample_features(pentry["ev"], [])["parent_sample_pseudonym"] if pentry["ev"] else None
        features = sample_features(entry["ev"], ancestors)
        all_events = [entry["ev"], *ancestors]
        record = {
            "site_id": self.proc.site_id, "participant_pseudonym": pseudonym, "sample_pseudonym": sample,
            **features,
            "version": self.proc.version,
            "revision": sum(len(evs) for evs in all_events),
            "computed_at": max(e["rec"] for evs in all_events for e in evs.values()),
        }
        value = self.proc.codec.encode(SAMPLE_FEATURES.value_schema, record)
        return OutRecord(self.proc.topic_samples, self.proc.key_of(pseudonym), value)

    # --- finalisation and emission -------------------------------------------------------------------------
    def _finalise_and_emit(self) -> None:
        for pseudonym, kind, start in self.hr_windows:  # completeness of the window's other rows changed
            for fs in cat.WEARABLE_SETS:
                key = window_key(self.p, pseudonym, fs, kind, start)
                if fs != cat.HEART_RATE and key not in self.touched and self.state.get(key) is not None:
                    self.touched[key] = None
        due = self.state.pop_due(self.p, self.state.watermark(self.p))
        due.sort(key=lambda k: (self._deadline_key(k), _FINALISE_ORDER[parse_window_key(k)[2]], k))
        due_set = set(due)
        out = self.result.out
        for key in self.touched:
            if key not in due_set:
                entry = self.state.get(key)
                if entry is not None:
                    out.append(self._feature_record(key, entry, final=False))
                    self.result.count("feature_records")
        for key in due:
            entry = self.state.get(key)
            if entry is None:
                continue
            out.append(self._feature_record(key, entry, final=True))
            self.result.count("feature_records")
            self.result.count("final_windows")
            _, pseudonym, fs, kind, start = parse_window_key(key)
            if fs == cat.SKIN_TEMPERATURE and kind is WindowKind.LOCAL_DAY:
                self._record_baseline_day(pseudonym, start, entry)
            self.state.delete(key)
        for pseudonym, sample in self.touched_samples:
            for s in (sample, *self._descendants(pseudonym, sample)):
                rec = self._sample_record(pseudonym, s)
                if rec is not None:
                    out.append(rec)
                    self.result.count("sample_records")

    def _deadline_key(self, key: str) -> int:
        _, _, _, kind, start = parse_window_key(key)
        return start + self._deadline_of(kind)

    def _feature_record(self, key: str, entry: Entry, final: bool) -> OutRecord:
        _, pseudonym, fs, kind, start = parse_window_key(key)
        if fs == cat.HEART_RATE:
            hr_entry: Entry | None = entry
            extra_revision = 0
        else:
            hr_entry = self.state.get(window_key(self.p, pseudonym, cat.HEART_RATE, kind, start))
            extra_revision = hr_entry["r"] if hr_entry else 0
        values = accumulators.values(fs, kind, entry["a"], self.settings)
        if final and fs == cat.SKIN_TEMPERATURE and kind is WindowKind.LOCAL_DAY:
            deviation = self._baseline_deviation(pseudonym, start, entry)
            if deviation is not None:
                values["baseline_deviation"] = deviation
        record = {
            "site_id": self.proc.site_id, "participant_pseudonym": pseudonym, "feature_set": fs,
            "window": kind.value, "window_start": start, "window_end": start + LENGTH_MS[kind],
            "utc_offset_minutes": entry["o"], "version": self.proc.version, "values": values,
            "completeness": accumulators.completeness(hr_entry["a"] if hr_entry else None, kind),
            "is_final": final, "revision": entry["r"] + extra_revision,
            "computed_at": max(entry["ca"], hr_entry["ca"] if hr_entry else 0),
        }
        value = self.proc.codec.encode(FEATURES.value_schema, record)
        return OutRecord(self.proc.topic_features, self.proc.key_of(pseudonym), value)

    # --- skin-temperature baseline -------------------------------------------------------------------------
    @staticmethod
    def _local_day(start: int, entry: Entry) -> int:
        return int((start + entry["o"] * 60_000) // DAY_MS)

    def _baseline_deviation(self, pseudonym: str, start: int, entry: Entry) -> float | None:
        baseline = self.state.get(baseline_key(self.p, pseudonym))
        if not baseline:
            return None
        day = self._local_day(start, entry)
        days = baseline["days"]
        previous = [days[str(d)] for d in range(day - self.settings.skin_baseline_days, day) if str(d) in days]
        if len(previous) < self.settings.skin_baseline_min_days:
            return None
        scale = SCALE[cat.SKIN_TEMPERATURE]
        means = [s1 / (n * scale) for s1, n in previous]
        acc = entry["a"]
        return float(acc["s1"] / (acc["n"] * scale) - sum(means) / len(means))

    def _record_baseline_day(self, pseudonym: str, start: int, entry: Entry) -> None:
        key = baseline_key(self.p, pseudonym)
        baseline = self.state.get(key) or {"days": {}}
        day = self._local_day(start, entry)
        baseline["days"][str(day)] = [entry["a"]["s1"], entry["a"]["n"]]
        newest = max(int(d) for d in baseline["days"])
        keep = 2 * self.settings.skin_baseline_days
        baseline["days"] = {d: v for d, v in baseline["days"].items() if int(d) > newest - keep}
        self.state.put(key, baseline)


def make_processor(settings: Settings, state: MutableMapping[str, Entry], version: int = cat.FEATURE_VERSION,
                   feature_settings: FeatureSettings | None = None) -> FeatureProcessor:
    """The processor of a site over a state mapping (faust Table in the worker, a dict in tests and replay)."""
    return FeatureProcessor(settings.site_id, state, feature_settings, version)

