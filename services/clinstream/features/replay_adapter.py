"""The features stage's replay adapter: its processor (any version) over a replay-owned state, erasures as of now.

Reads PSEUDO_TELEMETRY and PSEUDO_BIOBANK. Erasures are honoured as of now, whatever the range: before the
first batch (and again on resume) the whole ERASURE topic is read and every erased pseudonym gets the
processor's own erasure (its state is purged and tombstoned), so a replay never recomputes an erased
participant. A participant filter keeps the records whose key is the participant's SubjectKey. Feature
records are written through the store stage's sink; LATE_TELEMETRY outputs are only counted (their bytes are
still in the pseudonymised telemetry topic). A window is written once: when it turns final, or, if it is still open
when the range ends, by `finish` with its latest value (the live stage re-emits a window after every batch that
touched it, so that its row grows while people watch; nobody watches a replay's rows, and the rows it leaves are the
same); `finish` hands those over `REPLAY_FINISH_CHUNK` windows at a time, each chunk a delivery (one store
transaction), so the end of a large cohort's run never holds all its open windows' records at once. Wearable feature
records go to the sink as records, not Avro bytes it would decode again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import REPLAY_FINISH_CHUNK
from clinstream.core.records import BatchResult, InRecord, from_kafka_message
from clinstream.core.stage_spec import ReplayRequest
from clinstream.core.stream_host import REPLAY_READER, app_id, read_range
from clinstream.features.config import FeatureSettings
from clinstream.features.processor import FeatureProcessor
from clinstream.features.state import Entry


class FeaturesReplay:
    """Replay adapter of the features processor."""

    key_partitioned = True

    def __init__(self, settings: Settings, request: ReplayRequest, feature_settings: FeatureSettings | None = None
                 ) -> None:
        self.settings = settings
        self.version = request.version
        self.feature_settings = feature_settings
        self.keys = {subject_key(settings.site_id, p) for p in request.participants}
        self.state: dict[str, Entry] = {}
        self.processor = self._processor()
        self.store_topics = frozenset({self.processor.topic_features, self.processor.topic_samples})
        self.unpublished_topics = frozenset({self.processor.topic_late})

    def _processor(self) -> FeatureProcessor:
        return FeatureProcessor(self.settings.site_id, self.state, self.feature_settings, self.version,
                                emit_open=False, keep_records=True)

    def input_topics(self) -> tuple[str, ...]:
        """Pseudonymised telemetry and biobank events (erasures are applied up front, see the module doc)."""
        return self.processor.topic_telemetry, self.processor.topic_biobank

    def prepare(self, saved_state: Any) -> None:
        """Fresh or restored state, then every erasure requested until now, honoured by the processor itself."""
        self.state = dict(saved_state or {})
        self.processor = self._processor()
        topic = self.processor.topic_erasure
        group = app_id(self.settings, REPLAY_READER)
        erasures = [from_kafka_message(m) for m in read_range(self.settings, topic, group)]
        self.processor.process([r for r in erasures if r.value])  # purge + tombstone; bad ones: the worker's DLQ

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Filter by participant key, then run the processor."""
        if self.keys:
            kept = [r for r in records if r.key in self.keys]
            result = self.processor.process(kept) if kept else BatchResult()
            result.count("filtered_out", len(records) - len(kept))
            return result
        return self.processor.process(records)

    def finish(self) -> Iterable[BatchResult]:
        """The windows still open at the end of the range, with their latest value, `REPLAY_FINISH_CHUNK` at a time."""
        return self.processor.emit_open_windows(REPLAY_FINISH_CHUNK)

    def dump_state(self) -> Any:
        """The window/sample/baseline/tombstone/watermark entries (already JSON-able)."""
        return self.state
