"""Validation of LIMS events into Avro BiobankEvent records, with a content hash for idempotent resends."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from clinstream.core.dlq import Rejection
from clinstream.ingest.biobank_models import AssayPayload, BiobankEventIn, ConsentPayload, SamplePayload
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.errors import ApiError
from clinstream.ingest.telemetry_validate import instant_ms, valid_uuid
from clinstream.ingest.validation_errors import first_rejection

NS = "org.clinstream.biobank."
KINDS = ("sample", "assay", "consent")
_EVENT: TypeAdapter[BiobankEventIn] = TypeAdapter(BiobankEventIn)
_BRANCH = {SamplePayload: "SampleEvent", AssayPayload: "AssayResult", ConsentPayload: "ConsentEvent"}
# Payload fields added after events were first accepted: left out of the content hash while unset, so that a resend
# of an event accepted before they existed is still recognised as the same event (not an event-id conflict).
_ADDED_LATER = ("time_zone",)


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """A valid event, as the Avro BiobankEvent record to produce."""

    index: int
    event_id: str
    participant_id: str
    kind: str
    digest: bytes
    record: dict[str, Any]
    original: bytes
    path: str
    time_zone: str | None = None  # a consent event's participant zone


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """A refused event: why, and its original bytes for the dead-letter topic."""

    index: int
    event_id: str | None
    rejection: Rejection
    original: bytes


class BiobankValidator:
    """Validates the events of one request against the site's limits."""

    def __init__(self, limits: IngestSettings, site_id: str) -> None:
        self.limits = limits
        self.site_id = site_id

    def envelope(self, body: Any) -> list[Any]:
        """The request's event list; the whole request is refused (422) if the envelope is wrong."""
        if not isinstance(body, dict) or set(body) != {"events"}:
            raise ApiError(422, "invalid_request", "the body must be a JSON object with only an 'events' array")
        events = body["events"]
        if not isinstance(events, list) or not events:
            raise ApiError(422, "invalid_request", "'events' must be a non-empty array", field_path="events")
        if len(events) > self.limits.max_events_per_request:
            raise ApiError(422, "too_many_events", f"at most {self.limits.max_events_per_request} events per "
                           "request", field_path="events")
        return events

    def validate(self, index: int, raw: Any, *, received_ms: int, original: bytes | None = None,
                 prefix: str | None = None) -> AcceptedEvent | RejectedEvent:
        """Validate one event (a parsed JSON object); never raises for bad input."""
        prefix = f"events[{index}]" if prefix is None else prefix
        original_bytes = original if original is not None else orjson.dumps(raw)
        try:
            event = _EVENT.validate_python(raw)
        except ValidationError as exc:
            event_id = valid_uuid(raw["event_id"]) if isinstance(raw, dict) and isinstance(
                raw.get("event_id"), str) else None
            rejection = first_rejection(exc, prefix, tag_field="kind", tag_values=KINDS)
            return RejectedEvent(index, event_id, rejection, original_bytes)
        event_id = str(event.event_id)
        problem = self._time_problem(event, prefix, received_ms)
        if problem is not None:
            return RejectedEvent(index, event_id, problem, original_bytes)
        payload = event.payload
        occurred = instant_ms(event.occurred_at)
        record = {
            "event_id": event_id,
            "site_id": self.site_id,
            "participant_id": event.participant_id,
            "occurred_at": occurred,
            "recorded_at": instant_ms(event.recorded_at) if event.recorded_at is not None else received_ms,
            "operator_name": event.operator_name,
            "operator_role": event.operator_role,
            "comment": event.comment,
            "payload": (NS + _BRANCH[type(payload)], payload.model_dump(exclude={"kind"})),
        }
        unset_later = {name for name in _ADDED_LATER if getattr(payload, name, None) is None}
        content = event.model_dump(mode="json", exclude={"payload": unset_later} if unset_later else None)
        digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest()
        return AcceptedEvent(index, event_id, event.participant_id, payload.kind, digest, record, original_bytes,
                             prefix, payload.time_zone if isinstance(payload, ConsentPayload) else None)

    def _time_problem(self, event: BiobankEventIn, prefix: str, received_ms: int) -> Rejection | None:
        skew_ms = self.limits.max_future_skew_s * 1000
        occurred = instant_ms(event.occurred_at)
        if occurred > received_ms + skew_ms:
            return Rejection(f"occurred_at lies more than {self.limits.max_future_skew_s} s in the future",
                             f"{prefix}.occurred_at")
        if event.recorded_at is not None:
            recorded = instant_ms(event.recorded_at)
            if recorded > received_ms + skew_ms:
                return Rejection(f"recorded_at lies more than {self.limits.max_future_skew_s} s in the future",
                                 f"{prefix}.recorded_at")
            if recorded < occurred - skew_ms:
                return Rejection("recorded_at is before occurred_at", f"{prefix}.recorded_at")
        payload = event.payload
        if isinstance(payload, ConsentPayload) and payload.birth_date is not None and (
                payload.birth_date > event.occurred_at.date()):
            return Rejection("birth_date is after the event", f"{prefix}.payload.birth_date")
        return None
