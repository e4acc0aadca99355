"""The request context on ingest dead letters (Kafka headers): what a re-drive needs to rebuild the gateway's record.

The raw records hold facts that are not in a block's or event's JSON: the receipt instant (`received_at`, and a
LIMS event's default `recorded_at`), the authenticated device and the participant its credential is bound to
(telemetry), and the LIMS credential (the event-id ledger). The intakes put them on every ingest dead letter
as headers; the ingest DLQ is a raw-zone topic, where direct identifiers are allowed (never downstream).
Dead letters written before these headers existed carry none: `read_context` returns None for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from clinstream.core.constants import (
    HEADER_INGEST_DEVICE_ID,
    HEADER_INGEST_ENDPOINT,
    HEADER_INGEST_LIMS_KEY,
    HEADER_INGEST_PARTICIPANT_ID,
    HEADER_INGEST_RECEIVED_AT,
)

Endpoint = Literal["telemetry", "biobank"]
TELEMETRY: Endpoint = "telemetry"
BIOBANK: Endpoint = "biobank"


@dataclass(frozen=True, slots=True)
class IngestContext:
    """The request a dead letter came from: endpoint, receipt instant, and its principal."""

    endpoint: Endpoint
    received_ms: int
    device_id: str | None = None  # telemetry
    participant_id: str | None = None  # telemetry: the participant of the device's credential
    lims_key_id: str | None = None  # biobank

    @property
    def complete(self) -> bool:
        """Whether the endpoint's principal is known."""
        if self.endpoint == TELEMETRY:
            return bool(self.device_id and self.participant_id)
        return bool(self.lims_key_id)


def telemetry_context(received_ms: int, device_id: str, participant_id: str) -> IngestContext:
    """The context of a POST /v1/telemetry request by an authenticated device."""
    return IngestContext(TELEMETRY, received_ms, device_id=device_id, participant_id=participant_id)


def biobank_context(received_ms: int, lims_key_id: str) -> IngestContext:
    """The context of LIMS events (POST /v1/biobank/events or a CSV import)."""
    return IngestContext(BIOBANK, received_ms, lims_key_id=lims_key_id)


def context_headers(ctx: IngestContext) -> list[tuple[str, bytes]]:
    """The headers that carry a context."""
    headers = [(HEADER_INGEST_ENDPOINT, ctx.endpoint.encode()),
               (HEADER_INGEST_RECEIVED_AT, str(ctx.received_ms).encode())]
    for name, value in ((HEADER_INGEST_DEVICE_ID, ctx.device_id), (HEADER_INGEST_PARTICIPANT_ID, ctx.participant_id),
                        (HEADER_INGEST_LIMS_KEY, ctx.lims_key_id)):
        if value is not None:
            headers.append((name, value.encode()))
    return headers


def read_context(headers: Iterable[tuple[str, bytes | None]]) -> IngestContext | None:
    """The context of a dead letter's headers; None if absent, incomplete or malformed (the first of a name counts)."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name not in found and value is not None:
            try:
                found[name] = bytes(value).decode()
            except UnicodeDecodeError:
                return None
    endpoint = found.get(HEADER_INGEST_ENDPOINT)
    received = found.get(HEADER_INGEST_RECEIVED_AT, "")
    if endpoint not in (TELEMETRY, BIOBANK) or not received.isascii() or not received.isdigit():
        return None
    ctx = IngestContext(TELEMETRY if endpoint == TELEMETRY else BIOBANK, int(received),
                        device_id=found.get(HEADER_INGEST_DEVICE_ID) or None,
                        participant_id=found.get(HEADER_INGEST_PARTICIPANT_ID) or None,
                        lims_key_id=found.get(HEADER_INGEST_LIMS_KEY) or None)
    return ctx if ctx.complete else None
