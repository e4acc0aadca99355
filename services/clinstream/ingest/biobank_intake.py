"""LIMS intake: validate events, skip ones accepted before, produce the new ones, then remember their ids.

Idempotency by event id: an id recorded in `ingest_event_ids` is answered as a duplicate and not produced
again. Ids are recorded only after the broker acknowledged the events, so a crash in between can at worst
produce an event twice; downstream consumers deduplicate by event_id, so that is harmless.

A consent event with a `time_zone` sets the participant's zone (cred_<site>.participant_time_zones, see
time_zones.py for which source wins). It is recorded after the broker acknowledged and before the event ids, also
for duplicates: if it cannot be recorded the request fails (503), and the resend records it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clinstream.core.avro import Codec, get_codec, subject_key
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import Message
from clinstream.core.timeutil import from_ms
from clinstream.core.topics import RAW_BIOBANK, Stage, dlq
from clinstream.ingest.biobank_validate import AcceptedEvent, BiobankValidator, RejectedEvent
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.delivery import deliver
from clinstream.ingest.dlq_context import biobank_context, context_headers
from clinstream.ingest.gateway_db import DatabaseUnavailable, GatewayDb, LimsPrincipal, ParticipantZone
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.producer import AsyncDurableProducer

log = logging.getLogger("clinstream.ingest")
EVENT_ID_CONFLICT = "event_id was already used for a different event"


@dataclass
class BiobankOutcome:
    """What happened to each event of one request."""

    accepted: list[AcceptedEvent] = field(default_factory=list)
    duplicates: list[AcceptedEvent] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)


def _conflict(event: AcceptedEvent) -> RejectedEvent:
    return RejectedEvent(event.index, event.event_id, Rejection(EVENT_ID_CONFLICT, f"{event.path}.event_id"),
                         event.original)


class BiobankIntake:
    """POST /v1/biobank/events minus HTTP; `clinstream lims import` uses it too."""

    def __init__(self, site_id: str, limits: IngestSettings, producer: AsyncDurableProducer, db: GatewayDb,
                 metrics: GatewayMetrics, codec: Codec | None = None) -> None:
        self.site_id = site_id
        self.validator = BiobankValidator(limits, site_id)
        self.producer = producer
        self.db = db
        self.metrics = metrics
        self.codec = codec or get_codec()
        self.raw_topic = RAW_BIOBANK.name(site_id)
        self.dlq_topic = dlq(Stage.INGEST).name(site_id)

    async def submit(self, body: Any, lims: LimsPrincipal, received_ms: int) -> BiobankOutcome:
        """A whole request body (422 for a wrong envelope)."""
        return await self.submit_events(self.validator.envelope(body), lims, received_ms)

    async def submit_events(self, events: Sequence[Any], lims: LimsPrincipal, received_ms: int, *,
                            originals: Sequence[bytes] | None = None, prefixes: Sequence[str] | None = None,
                            content_type: str = "application/json") -> BiobankOutcome:
        """Validate, deduplicate, produce and record a list of parsed events.

        Raises BrokerUnavailable or DatabaseUnavailable when the outcome cannot be made durable in time.
        """
        outcome = BiobankOutcome()
        first_of: dict[str, AcceptedEvent] = {}
        for i, raw in enumerate(events):
            result = self.validator.validate(i, raw, received_ms=received_ms,
                                             original=originals[i] if originals is not None else None,
                                             prefix=prefixes[i] if prefixes is not None else None)
            if isinstance(result, RejectedEvent):
                outcome.rejected.append(result)
                continue
            earlier = first_of.get(result.event_id)
            if earlier is None:
                first_of[result.event_id] = result
            elif earlier.digest == result.digest:
                outcome.duplicates.append(result)
            else:
                outcome.rejected.append(_conflict(result))
        known = await self.db.known_events(list(first_of))
        for event_id, event in first_of.items():
            if event_id not in known:
                outcome.accepted.append(event)
            elif known[event_id] == event.digest:
                outcome.duplicates.append(event)
            else:
                outcome.rejected.append(_conflict(event))
        raw, dead = self._encode(outcome, content_type, context_headers(biobank_context(received_ms, lims.key_id)))
        await deliver(self.producer, self.metrics, "biobank", [(self.raw_topic, raw)], [(self.dlq_topic, dead)])
        await self.db.record_time_zones([
            ParticipantZone(e.participant_id, e.time_zone, from_ms(e.record["occurred_at"]), e.event_id)
            for e in (*outcome.accepted, *outcome.duplicates) if e.time_zone is not None])
        try:
            await self.db.record_events([(e.event_id, e.digest) for e in outcome.accepted], lims.key_id)
        except DatabaseUnavailable:  # the events are durable; a resend would only add a harmless duplicate
            self.metrics.unavailable.labels("idempotency_record").inc()
            log.warning("accepted LIMS events could not be recorded for idempotency (database unavailable)")
        for outcome_name, items in (("accepted", outcome.accepted), ("duplicate", outcome.duplicates)):
            for event in items:
                self.metrics.events.labels(event.kind, outcome_name).inc()
        if outcome.rejected:
            self.metrics.events.labels("any", "rejected").inc(len(outcome.rejected))
        return outcome

    def _encode(self, outcome: BiobankOutcome, content_type: str,
                context: list[tuple[str, bytes]]) -> tuple[list[Message], list[Message]]:
        raw: list[Message] = []
        kept: list[AcceptedEvent] = []
        for event in outcome.accepted:
            try:
                value = self.codec.encode(RAW_BIOBANK.value_schema, event.record)
            except Exception as exc:  # a validated event that Avro refuses is a gateway bug: dead-letter, no 500
                outcome.rejected.append(RejectedEvent(event.index, event.event_id, Rejection(
                    f"not encodable as BiobankEvent ({type(exc).__name__})", event.path), event.original))
                continue
            kept.append(event)
            raw.append((subject_key(self.site_id, event.participant_id), value, None))
        outcome.accepted = kept
        dead = [dead_letter(self.codec, site_id=self.site_id, stage=Stage.INGEST, rejection=r.rejection,
                            original_value=r.original, content_type=content_type, extra_headers=context)
                for r in outcome.rejected]
        return raw, dead
