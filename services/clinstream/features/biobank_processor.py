"""The biobank-sample half of the feature processor: sample events recorded per sample, lineage re-derived.

Per batch and input partition, events are recorded per sample (deduplicated by event id), each sample keeps its
children, and every touched sample and its descendants are re-derived (`biobank.sample_features`, ancestors parent
first, each cut where its own line was split off) and emitted once with their latest value.
"""

from __future__ import annotations

from typing import Any

from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.topics import SAMPLE_FEATURES
from clinstream.features.biobank import compact_event, parent_of, sample_features
from clinstream.features.context import ProcessorContext
from clinstream.features.partition_work import PartitionWork
from clinstream.features.state import Entry, sample_key

_MAX_LINEAGE_DEPTH = 8


class BiobankSamples(PartitionWork):
    """One partition's biobank events of one batch: record them per sample and emit the affected samples."""

    def __init__(self, proc: ProcessorContext, p: int, result: BatchResult) -> None:
        super().__init__(proc, p, result)
        self.touched_samples: dict[tuple[str, str], None] = {}

    def record_events(self, events: list[tuple[InRecord, dict[str, Any]]]) -> None:
        """Record decoded biobank events (deduplicated by event id) and link children to their parents."""
        for rec, event in events:
            try:
                compact = compact_event(event)
            except (KeyError, TypeError, ValueError):
                self.reject(rec, "invalid biobank payload", "payload")
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

    def emit(self) -> None:
        """Emit every touched sample and its descendants with their re-derived features."""
        for pseudonym, sample in self.touched_samples:
            for s in (sample, *self._descendants(pseudonym, sample)):
                rec = self._sample_record(pseudonym, s)
                if rec is not None:
                    self.result.out.append(rec)
                    self.result.count("sample_records")

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
        parent = parent_of(entry["ev"])
        while parent and parent not in seen and len(ancestors) < _MAX_LINEAGE_DEPTH:
            seen.add(parent)
            pentry = self.state.get(sample_key(self.p, pseudonym, parent))
            if not pentry:
                break
            ancestors.append(pentry["ev"])
            parent = parent_of(pentry["ev"])
        features = sample_features(entry["ev"], ancestors, self.proc.version)
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
