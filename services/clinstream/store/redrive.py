"""The store stage's dead-letter re-driver: judged by the store's decoder and checks, handed back if it passes."""

from __future__ import annotations

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.dead_letters import DeadLetterRecord, Verdict, reinjection, source_record
from clinstream.core.dlq import Rejection
from clinstream.store.decode import BatchDecoder


class StoreRedriver:
    """Judges with the store's decoder and checks."""

    def __init__(self, settings: Settings) -> None:
        self.decoder = BatchDecoder(get_codec(), settings.site_id)
        self.inputs = self.decoder.topics

    def judge(self, rec: DeadLetterRecord) -> Verdict:
        """Pass if the store's checks accept it."""
        src = source_record(rec, self.inputs)
        if isinstance(src, Rejection):
            return Verdict(rejection=src)
        decoded = self.decoder.decode([src])
        if decoded.rejected:
            return Verdict(rejection=decoded.rejected[0][1])
        return Verdict(reinjection(rec, src.topic))
