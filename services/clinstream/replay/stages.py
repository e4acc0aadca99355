"""The stages a replay can re-run: each wraps the stage's pure batch processor over a replay-owned state mapping.

* features: `FeatureProcessor` (any version) over a plain dict, reading PSEUDO_TELEMETRY and PSEUDO_BIOBANK.
  Erasures are honoured as of now, whatever the range: before the first batch (and again on resume) the whole
  ERASURE topic is read and every erased pseudonym gets the processor's tombstone (its state is purged), so a
  replay never recomputes an erased participant. A participant filter keeps the records whose key is the
  participant's SubjectKey (and the plan reads only the partitions those keys live in).
* pseudonymise: `PseudonymiseProcessor` with the site's current key ring, over a copy of the live consent
  table (read from the worker's changelog topic at the start), records ordered per partition as the worker does.
  Consent is therefore the current one: a participant who withdrew since is not re-emitted. A participant
  filter keeps the outputs keyed by the selected pseudonyms (raw topics are keyed by participant id, which the
  operator does not give).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.records import BatchResult, InRecord, from_kafka_message
from clinstream.core.stream_host import changelog_topic
from clinstream.core.topics import ERASURE, PSEUDO_BIOBANK, PSEUDO_TELEMETRY, RAW_BIOBANK, RAW_TELEMETRY, Stage
from clinstream.features.config import FeatureSettings
from clinstream.features.processor import FeatureProcessor
from clinstream.features.state import Entry
from clinstream.replay.kafka_io import read_to_end


class ReplayStage(Protocol):
    """What the replay engine needs from a stage."""

    stage: Stage

    def input_topics(self) -> tuple[str, ...]:
        """The topics a replay of this stage reads."""
        ...

    def prepare(self, saved_state: Any) -> None:
        """Build the processor over a fresh state (None) or a checkpoint's state."""
        ...

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch of input records (any partitions, offset order per partition)."""
        ...

    def dump_state(self) -> Any:
        """The state mapping in JSON-able form, for the checkpoint."""
        ...


def reader_group(settings: Settings) -> str:
    """Group id of the replay tools' one-off reads (assign() only, never committed)."""
    return f"clinstream-{settings.site_id}-replay-reader"


def _merge(into: BatchResult, other: BatchResult) -> None:
    into.out.extend(other.out)
    for name, n in other.counters.items():
        into.count(name, n)


class FeaturesStage:
    """Replay host of the features processor."""

    stage = Stage.FEATURES

    def __init__(self, settings: Settings, version: int, participants: Sequence[str] = (),
                 feature_settings: FeatureSettings | None = None) -> None:
        self.settings = settings
        self.version = version
        self.feature_settings = feature_settings
        self.keys = {subject_key(settings.site_id, p) for p in participants}
        self.state: dict[str, Entry] = {}
        self.processor: FeatureProcessor | None = None

    def input_topics(self) -> tuple[str, ...]:
        """Pseudonymised telemetry and biobank events (erasures are applied up front, see the module doc)."""
        site = self.settings.site_id
        return PSEUDO_TELEMETRY.name(site), PSEUDO_BIOBANK.name(site)

    def prepare(self, saved_state: Any) -> None:
        """Fresh or restored state, then every erasure requested until now, honoured by the processor itself."""
        self.state = dict(saved_state or {})
        self.processor = FeatureProcessor(self.settings.site_id, self.state, self.feature_settings, self.version)
        topic = ERASURE.name(self.settings.site_id)
        erasures = [from_kafka_message(m) for m in read_to_end(self.settings, topic, reader_group(self.settings))]
        self.processor.process([r for r in erasures if r.value])  # purge + tombstone; bad ones: the worker's DLQ

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Filter by participant key, then run the processor."""
        assert self.processor is not None, "prepare() first"
        if self.keys:
            kept = [r for r in records if r.key in self.keys]
            result = self.processor.process(kept) if kept else BatchResult()
            result.count("filtered_out", len(records) - len(kept))
            return result
        return self.processor.process(records)

    def dump_state(self) -> Any:
        """The window/sample/baseline/tombstone/watermark entries (already JSON-able)."""
        return self.state


def consent_changelog_topic(settings: Settings) -> str:
    """The pseudonymise worker's consent-table changelog, named by the stream host."""
    from clinstream.pseudonymise.worker import CONSENT_TABLE, STAGE

    return changelog_topic(settings, STAGE, CONSENT_TABLE)


class PseudonymiseStage:
    """Replay host of the pseudonymise processor."""

    stage = Stage.PSEUDONYMISE

    def __init__(self, settings: Settings, participants: Sequence[str] = ()) -> None:
        self.settings = settings
        self.keys = {subject_key(settings.site_id, p) for p in participants}
        self.consent: dict[str, Any] = {}
        self.processor: Any = None

    def input_topics(self) -> tuple[str, ...]:
        """Raw telemetry and raw biobank events."""
        site = self.settings.site_id
        return RAW_TELEMETRY.name(site), RAW_BIOBANK.name(site)

    def prepare(self, saved_state: Any) -> None:
        """The consent table from the checkpoint, or a copy of the live one; the current key ring."""
        from clinstream.pseudonymise.consent import ConsentEntry
        from clinstream.pseudonymise.keys import load_key_ring
        from clinstream.pseudonymise.processor import PseudonymiseProcessor

        consent: dict[str, ConsentEntry] = {}
        if saved_state is not None:
            consent = {k: ConsentEntry.from_bytes(orjson.dumps(v)) for k, v in saved_state.items()}
        else:
            topic = consent_changelog_topic(self.settings)
            for msg in read_to_end(self.settings, topic, reader_group(self.settings)):
                key = msg.key()
                if key is None:
                    continue
                value = msg.value()
                if value is None:
                    consent.pop(key.decode(), None)
                else:
                    consent[key.decode()] = ConsentEntry.from_bytes(value)
        self.consent = consent
        self.processor = PseudonymiseProcessor(self.settings.site_id, load_key_ring(self.settings), consent)

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Per partition, topics merged by record time (as the worker does); outputs filtered by participant."""
        from clinstream.pseudonymise.processor import order_for_processing

        assert self.processor is not None, "prepare() first"
        result = BatchResult()
        for _, ordered in order_for_processing(records).items():
            _merge(result, self.processor.process(ordered))
        if self.keys:
            kept = [o for o in result.out if o.key in self.keys]
            result.count("filtered_out", len(result.out) - len(kept))
            result.out = kept
        return result

    def dump_state(self) -> Any:
        """Consent entries as JSON objects."""
        return {k: orjson.loads(v.to_bytes()) for k, v in self.consent.items()}


def make_stage(settings: Settings, stage: str, version: int, participants: Sequence[str]) -> ReplayStage:
    """The replay host of a stage by name."""
    if stage == Stage.FEATURES.value:
        return FeaturesStage(settings, version, participants)
    if stage == Stage.PSEUDONYMISE.value:
        return PseudonymiseStage(settings, participants)
    raise ValueError(f"stage {stage!r} cannot be replayed")
