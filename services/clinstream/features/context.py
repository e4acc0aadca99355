"""The processor facade's attributes that its wearable and biobank halves use (a Protocol, so no import cycle)."""

from __future__ import annotations

from typing import Protocol

from clinstream.core.avro import Codec
from clinstream.core.records import InRecord, OutRecord
from clinstream.features.config import FeatureSettings
from clinstream.features.state import FeatureState
from clinstream.features.windows import WindowKind


class ProcessorContext(Protocol):
    """Site, version, codec, topics, settings and state shared by the halves of one feature processor."""

    site_id: str
    version: int
    codec: Codec
    settings: FeatureSettings
    state: FeatureState
    deadline_ms: dict[WindowKind, int]
    coalesce_blocks: bool
    emit_open: bool
    keep_records: bool
    topic_features: str
    topic_samples: str
    topic_late: str

    def key_of(self, pseudonym: str) -> bytes:
        """The output key of a participant."""

    def dead_letter(self, rec: InRecord, reason: str, field_path: str | None = None) -> OutRecord:
        """A DLQ record of an input."""
