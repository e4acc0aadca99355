"""The pseudonymise stage's dead-letter re-driver: judged by the processor (current key ring), handed back on a pass."""

from __future__ import annotations

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.dead_letters import DeadLetterRecord, Verdict, judged_by_processor, source_record
from clinstream.core.dlq import Rejection
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY, Stage, dlq
from clinstream.pseudonymise.keys import load_key_ring
from clinstream.pseudonymise.processor import PseudonymiseProcessor


class PseudonymiseRedriver:
    """Judges with the pseudonymise processor (current key ring) on a scratch consent state."""

    def __init__(self, settings: Settings) -> None:
        self.codec = get_codec()
        site = settings.site_id
        self.processor = PseudonymiseProcessor(site, load_key_ring(settings), {})
        self.inputs = (RAW_TELEMETRY.name(site), RAW_BIOBANK.name(site))
        self.dlq_topic = dlq(Stage.PSEUDONYMISE).name(site)

    def judge(self, rec: DeadLetterRecord) -> Verdict:
        """Pass if the processor emits no dead letter for it."""
        src = source_record(rec, self.inputs)
        if isinstance(src, Rejection):
            return Verdict(rejection=src)
        self.processor.consent_state.clear()
        return judged_by_processor(self.codec, rec, src, self.processor.process([src]).out, self.dlq_topic)
