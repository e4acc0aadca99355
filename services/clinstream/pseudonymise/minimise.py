"""Pure minimisation of raw records into their pseudonymised schemas: identifiers replaced, the rest generalised.

What happens to each raw field:

* participant id, device serial, sample and parent-sample barcodes -> keyed pseudonyms (own domains);
* names (participant name, LIMS operator name), free text (comment, disposal reason), storage position,
  shipment reference -> dropped (the output schemas have no field for them);
* date of birth -> year of birth, or "90+" for ages of 90 and over at the event;
* postcode -> its first two characters ("region");
* operator role -> kept only if it is in the closed vocabulary `OPERATOR_ROLES`, else "other";
* code-like strings (SPREC container, UCUM units, DUO scope) -> kept only if they look like codes;
  assay analyte/LOINC/unit that do not look like codes make the record invalid (DLQ).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from clinstream.core.constants import AGE_TOP_CODE, OPERATOR_ROLES, POSTCODE_REGION_CHARS
from clinstream.core.timeutil import from_ms
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

SAMPLE_EVENT = "org.clinstream.biobank.SampleEvent"
ASSAY_RESULT = "org.clinstream.biobank.AssayResult"
CONSENT_EVENT = "org.clinstream.biobank.ConsentEvent"
P_SAMPLE_EVENT = "org.clinstream.biobank.PseudonymisedSampleEvent"
P_ASSAY_RESULT = "org.clinstream.biobank.PseudonymisedAssayResult"
P_CONSENT_EVENT = "org.clinstream.biobank.PseudonymisedConsentEvent"

_CONTAINER_RE = re.compile(r"^[A-Z0-9]{3}$")
_UCUM_RE = re.compile(r"^[A-Za-z0-9%/.\[\]{}^*'-]{1,24}$")
_LOINC_RE = re.compile(r"^\d{1,8}-\d$")
_ANALYTE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ,.()+/%-]{0,47}$")
_DUO_RE = re.compile(r"^DUO:\d{7}$")
OTHER_ROLE = "other"


class MinimisationError(ValueError):
    """A raw record that cannot be minimised safely; reason and field path never contain its values."""

    def __init__(self, reason: str, field_path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field_path = field_path


def _as_date(at: datetime | int) -> date:
    return (from_ms(at) if isinstance(at, int) else at).date()


def generalise_birth_date(birth_date: date | None, at: datetime | int) -> str | None:
    """Year of birth as text, or "90+" if the person is 90 or older at `at` (UTC date)."""
    if birth_date is None:
        return None
    on = _as_date(at)
    age = on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))
    if age < 0:
        raise MinimisationError("birth_date is after the event", "payload.birth_date")
    return f"{AGE_TOP_CODE}+" if age >= AGE_TOP_CODE else str(birth_date.year)


def coarsen_postcode(postcode: str | None) -> str | None:
    """The first two characters of a postcode (spaces removed, upper-case); None if nothing usable."""
    if postcode is None:
        return None
    region = "".join(postcode.split()).upper()[:POSTCODE_REGION_CHARS]
    return region if len(region) == POSTCODE_REGION_CHARS and region.isalnum() and region.isascii() else None


def generalise_role(role: str | None) -> str | None:
    """The operator role if it is in the closed vocabulary, else "other" (roles are typed by people)."""
    if role is None:
        return None
    norm = role.strip().lower().replace(" ", "_").replace("-", "_")
    return norm if norm in OPERATOR_ROLES else OTHER_ROLE


def _code_or_none(value: str | None, pattern: re.Pattern[str]) -> str | None:
    return value if value is not None and pattern.match(value) else None


def duo_scope(scope: list[str] | tuple[str, ...]) -> list[str]:
    """Only well-formed GA4GH DUO codes, de-duplicated and sorted."""
    return sorted({code for code in scope if _DUO_RE.match(code)})


def _sample_event(ev: Mapping[str, Any], p: Pseudonymiser) -> tuple[str, dict[str, Any]]:
    parent = ev.get("parent_sample_id")
    return (P_SAMPLE_EVENT, {
        "event_type": ev["event_type"],
        "sample_pseudonym": p.sample(ev["sample_id"]),
        "parent_sample_pseudonym": p.sample(parent) if parent else None,
        "sample_type": ev["sample_type"],
        "container": _code_or_none(ev.get("container"), _CONTAINER_RE),
        "quantity": ev.get("quantity"),
        "quantity_unit": _code_or_none(ev.get("quantity_unit"), _UCUM_RE),
        "temperature_c": ev.get("temperature_c"),
        "centrifugation": ev.get("centrifugation"),
        "storage_band": ev.get("storage_band"),
        "freeze_thaw_count": ev.get("freeze_thaw_count"),
        "qc_passed": ev.get("qc_passed"),
        "storage_container": ev.get("storage_container"),
        "programmable_freezing": ev.get("programmable_freezing"),
    })


def _assay_result(ev: Mapping[str, Any], p: Pseudonymiser) -> tuple[str, dict[str, Any]]:
    for name, pattern in (("analyte", _ANALYTE_RE), ("loinc_code", _LOINC_RE), ("unit", _UCUM_RE)):
        if not pattern.match(ev[name]):
            raise MinimisationError(f"assay {name} is not code-like", f"payload.{name}")
    return (P_ASSAY_RESULT, {
        "sample_pseudonym": p.sample(ev["sample_id"]),
        "analyte": ev["analyte"],
        "loinc_code": ev["loinc_code"],
        "value": ev["value"],
        "unit": ev["unit"],
    })


def minimise_consent(ev: Mapping[str, Any], occurred_at: datetime | int) -> tuple[str, dict[str, Any]]:
    """A raw ConsentEvent as a PseudonymisedConsentEvent (name dropped, birth date and postcode generalised)."""
    return (P_CONSENT_EVENT, {
        "action": ev["action"],
        "status": ev["status"],
        "scope": duo_scope(ev.get("scope") or []),
        "birth_year": generalise_birth_date(ev.get("birth_date"), occurred_at),
        "region": coarsen_postcode(ev.get("postcode")),
    })


def minimise_biobank_event(raw: Mapping[str, Any], p: Pseudonymiser,
                           participant_pseudonym: str | None = None) -> dict[str, Any]:
    """A raw BiobankEvent as a PseudonymisedBiobankEvent record."""
    kind, payload = raw["payload"]
    if kind == SAMPLE_EVENT:
        out_payload = _sample_event(payload, p)
    elif kind == ASSAY_RESULT:
        out_payload = _assay_result(payload, p)
    elif kind == CONSENT_EVENT:
        out_payload = minimise_consent(payload, raw["occurred_at"])
    else:
        raise MinimisationError("unknown biobank payload type", "payload")
    return {
        "event_id": raw["event_id"],
        "site_id": raw["site_id"],
        "participant_pseudonym": participant_pseudonym or p.participant(raw["participant_id"]),
        "key_version": p.key_version,
        "occurred_at": raw["occurred_at"],
        "recorded_at": raw["recorded_at"],
        "operator_role": generalise_role(raw.get("operator_role")),
        "payload": out_payload,
    }
