"""The features stage's dead-letter re-driver: judged by a fresh processor (current settings), handed back on a pass."""

from __future__ import annotations

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.dead_letters import DeadLetterRecord, Verdict, judged_by_processor, source_record
from clinstream.core.dlq import Rejection
from clinstream.core.topics import ERASURE, PSEUDO_BIOBANK, PSEUDO_TELEMETRY, Stage, dlq


class FeaturesRedriver:
    """Judges with the features processor (current FeatureSettings) on a scratch state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = get_codec()
        site = settings.site_id
        self.inputs = (PSEUDO_TELEMETRY.name(site), PSEUDO_BIOBANK.name(site), ERASURE.name(site))
        self.dlq_topic = dlq(Stage.FEATURES).name(site)

    def judge(self, rec: DeadLetterRecord) -> Verdict:
        """Pass if a fresh processor emits no dead letter for it."""
        from clinstream.features.config import FeatureSettings
        from clinstream.features.processor import FeatureProcessor

        src = source_record(rec, self.inputs)
        if isinstance(src, Rejection):
            return Verdict(rejection=src)
        outs = FeatureProcessor(self.settings.site_id, {}, FeatureSettings()).process([src]).out
        return judged_by_processor(self.codec, rec, src, outs, self.dlq_topic)
