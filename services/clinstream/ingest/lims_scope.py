"""LIMS key scopes: the event types (lifecycle, assay, consent) and sample-type prefixes a key may post."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clinstream.ingest.credentials import LIMS_EVENT_TYPES
from clinstream.ingest.errors import ApiError
from clinstream.ingest.gateway_db import LimsPrincipal

_TYPE_OF_KIND = {kind: event_type for event_type, kind in LIMS_EVENT_TYPES.items()}


def _payload(event: Any) -> dict[str, Any]:
    payload = event.get("payload") if isinstance(event, dict) else None
    return payload if isinstance(payload, dict) else {}


def check_scope(events: Sequence[Any], lims: LimsPrincipal) -> None:
    """403 naming the first event outside the key's scope; events too malformed to tell are left to validation."""
    if lims.event_types is None and lims.sample_prefixes is None:
        return
    for i, event in enumerate(events):
        payload = _payload(event)
        event_type = _TYPE_OF_KIND.get(payload.get("kind"))  # type: ignore[arg-type]
        if event_type is None:
            continue
        if lims.event_types is not None and event_type not in lims.event_types:
            raise ApiError(403, "outside_key_scope", f"this LIMS key may not post {event_type} events",
                           field_path=f"events[{i}].payload.kind")
        sample_id = payload.get("sample_id")
        if lims.sample_prefixes is not None and event_type != "consent" and (
                not isinstance(sample_id, str) or not sample_id.startswith(lims.sample_prefixes)):
            raise ApiError(403, "outside_key_scope", "this LIMS key may post only samples whose id starts with "
                           "one of its sample-type prefixes", field_path=f"events[{i}].payload.sample_id")
