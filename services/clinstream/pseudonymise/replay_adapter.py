"""The pseudonymise stage's replay adapter: its processor with the current key ring over a copy of the consent table.

The consent table is read from the worker's own changelog topic at the start, so consent is the current one:
a participant who withdrew since is not re-emitted. Records are ordered per partition as the worker orders them.
A participant filter keeps the outputs keyed by the selected pseudonyms (raw topics are keyed by participant
id, which the operator does not give). Every output goes back to its live topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stage_spec import ReplayRequest
from clinstream.core.stream_host import REPLAY_READER, app_id, changelog_topic, read_range
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY
from clinstream.pseudonymise import CONSENT_TABLE
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import load_key_ring
from clinstream.pseudonymise.processor import PseudonymiseProcessor, order_for_processing
from clinstream.pseudonymise.worker import STAGE


class PseudonymiseReplay:
    """Replay adapter of the pseudonymise processor."""

    key_partitioned = False
    store_topics: frozenset[str] = frozenset()
    unpublished_topics: frozenset[str] = frozenset()

    def __init__(self, settings: Settings, request: ReplayRequest) -> None:
        self.settings = settings
        self.keys = {subject_key(settings.site_id, p) for p in request.participants}
        self.consent: dict[str, ConsentEntry] = {}
        self.processor: PseudonymiseProcessor | None = None

    def input_topics(self) -> tuple[str, ...]:
        """Raw telemetry and raw biobank events."""
        site = self.settings.site_id
        return RAW_TELEMETRY.name(site), RAW_BIOBANK.name(site)

    def prepare(self, saved_state: Any) -> None:
        """The consent table from the checkpoint, or a copy of the live one; the current key ring."""
        consent: dict[str, ConsentEntry] = {}
        if saved_state is not None:
            consent = {k: ConsentEntry.from_bytes(orjson.dumps(v)) for k, v in saved_state.items()}
        else:
            topic = changelog_topic(self.settings, STAGE, CONSENT_TABLE)
            for msg in read_range(self.settings, topic, app_id(self.settings, REPLAY_READER)):
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

    def finish(self) -> Iterable[BatchResult]:
        """Nothing is held back to the end of a range."""
        return ()

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Per partition, topics merged by record time (as the worker does); outputs filtered by participant."""
        assert self.processor is not None, "prepare() first"
        result = BatchResult()
        for _, ordered in order_for_processing(list(records)).items():
            one = self.processor.process(ordered)
            result.out.extend(one.out)
            for name, n in one.counters.items():
                result.count(name, n)
        if self.keys:
            kept = [o for o in result.out if o.key in self.keys]
            result.count("filtered_out", len(result.out) - len(kept))
            result.out = kept
        return result

    def dump_state(self) -> Any:
        """Consent entries as JSON objects."""
        return {k: orjson.loads(v.to_bytes()) for k, v in self.consent.items()}
