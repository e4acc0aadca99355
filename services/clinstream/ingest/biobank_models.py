"""The JSON API of POST /v1/biobank/events: LIMS sample-lifecycle, assay-result and consent events, and the answer.

Every event has a LIMS-assigned random `event_id`; a resend keeps it and changes nothing. `payload.kind` says
which of the three event kinds it is. Enumerations follow the Avro contract (schemas/org.clinstream.biobank.*):
sample event types are OpenSpecimen-like, sample types and storage bands are SPREC codes, consent status is the
FHIR Consent status, consent scope is a list of GA4GH DUO codes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

from clinstream.core.constants import INGEST_MAX_EVENTS_PER_REQUEST, KNOWN_ASSAYS
from clinstream.ingest.telemetry_models import Instant, ParticipantId, RejectedItem
from clinstream.ingest.time_zones import is_iana_zone

SampleEventType = Literal["COLLECTED", "RECEIVED", "CENTRIFUGED", "ALIQUOTED", "FROZEN", "STORED", "MOVED",
                          "THAWED", "SHIPPED", "DISTRIBUTED", "DISPOSED", "QC"]
SprecSampleType = Literal["BLD", "SER", "PL1", "PL2", "URN", "SAL", "CSF", "DNA", "RNA", "ZZZ"]
StorageBand = Literal["RT", "C2_TO_10", "M18_TO_35", "M60_TO_85", "BELOW_M135", "LN2_VAPOUR", "LN2_LIQUID"]
StorageContainer = Literal["PP_TUBE_0_5_TO_2ML", "CRYOTUBE_1_TO_2ML", "PLASTIC_CRYO_STRAW", "STRAW",
                           "PP_TUBE_5ML_OR_MORE", "MICROPLATE", "PARAFFIN_BLOCK", "BAG", "DRY_TECHNOLOGY_MEDIUM",
                           "OTHER"]
ConsentStatus = Literal["DRAFT", "PROPOSED", "ACTIVE", "REJECTED", "INACTIVE", "ENTERED_IN_ERROR"]

Barcode = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"),
                    Field(description="Sample barcode.", examples=["S-000123-01"])]
Ucum = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9%/.\[\]{}^*'-]{1,24}$"),
                 Field(description="UCUM unit, e.g. mL, mg/L.")]
Number = Annotated[float, Strict()]
ShortText = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=100)]
LongText = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=2000)]


def loinc_check_digit(number: str) -> int:
    """The LOINC mod-10 check digit of the digits before the hyphen (the Luhn scheme LOINC documents)."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def _loinc(value: Any) -> Any:
    if isinstance(value, str):
        number, sep, check = value.partition("-")
        if not (sep and number.isdigit() and check.isdigit() and len(check) == 1 and 1 <= len(number) <= 7
                and number.isascii()):
            raise ValueError("a LOINC code looks like 1988-5")
        if loinc_check_digit(number) != int(check):
            raise ValueError("wrong LOINC check digit")
    return value


def _iana_zone(value: str) -> str:
    if not is_iana_zone(value):
        raise ValueError("must be an IANA time zone name such as Europe/Berlin")
    return value


def _text_date(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a date string YYYY-MM-DD")
    return value


class Centrifugation(BaseModel):
    """One centrifugation run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    g_force: Annotated[float, Strict(), Field(gt=0, le=100_000, description="Relative centrifugal force, g.")]
    minutes: Annotated[float, Strict(), Field(gt=0, le=240)]
    temperature_c: Annotated[float, Strict(), Field(ge=-20, le=45)]
    braking: Annotated[bool, Strict()] = True


class SamplePayload(BaseModel):
    """A sample-lifecycle event (OpenSpecimen-like) with the fields SPREC needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sample"]
    event_type: SampleEventType
    sample_id: Barcode
    parent_sample_id: Barcode | None = Field(default=None, description="Parent barcode, for aliquots.")
    sample_type: SprecSampleType = Field(description="SPREC sample type code.")
    container: Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Z0-9]{3}$")] | None = Field(
        default=None, description="SPREC primary container code, e.g. SST, PED, SCI, CPT, PAX.")
    quantity: Annotated[float, Strict(), Field(ge=0, le=1_000_000)] | None = None
    quantity_unit: Ucum | None = None
    temperature_c: Annotated[float, Strict(), Field(ge=-273.15, le=100)] | None = None
    centrifugation: Centrifugation | None = None
    storage_location: ShortText | None = Field(default=None, description="Freezer/rack/box position.")
    storage_band: StorageBand | None = None
    freeze_thaw_count: Annotated[int, Strict(), Field(ge=0, le=1000)] | None = None
    qc_passed: Annotated[bool, Strict()] | None = None
    shipment_reference: ShortText | None = None
    disposal_reason: LongText | None = None
    storage_container: StorageContainer | None = Field(default=None, description="SPREC long-term storage container.")
    programmable_freezing: Annotated[bool, Strict()] | None = Field(
        default=None, description="Whether a FROZEN event used programmable (controlled-rate) freezing.")

    @model_validator(mode="after")
    def _consistent(self) -> SamplePayload:
        if self.event_type == "CENTRIFUGED" and self.centrifugation is None:
            raise ValueError("a CENTRIFUGED event needs centrifugation")
        if self.event_type == "QC" and self.qc_passed is None:
            raise ValueError("a QC event needs qc_passed")
        if self.event_type == "ALIQUOTED" and self.parent_sample_id is None:
            raise ValueError("an ALIQUOTED event needs parent_sample_id")
        if self.quantity is not None and self.quantity_unit is None:
            raise ValueError("a quantity needs quantity_unit")
        if self.parent_sample_id is not None and self.parent_sample_id == self.sample_id:
            raise ValueError("a sample cannot be its own parent")
        return self


def _coded_analyte(name: str) -> str:
    """An analyte must be the controlled name of a coded assay (free text could carry identifiers downstream)."""
    if name not in KNOWN_ASSAYS:
        raise ValueError("analyte must be a coded assay: " + ", ".join(KNOWN_ASSAYS))
    return name


class AssayPayload(BaseModel):
    """An assay result measured on a sample, e.g. CRP (LOINC 1988-5) in mg/L."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["assay"]
    sample_id: Barcode
    analyte: Annotated[str, Strict(), AfterValidator(_coded_analyte),
                       Field(description="Controlled name of a coded assay: " + ", ".join(
                           f"{name} (LOINC {code})" for name, (code, _) in KNOWN_ASSAYS.items()) + ".")]
    loinc_code: Annotated[str, Strict(), BeforeValidator(_loinc), Field(description="LOINC code, e.g. 1988-5.")]
    value: Annotated[float, Strict(), Field(ge=-1e9, le=1e9)]
    unit: Ucum

    @model_validator(mode="after")
    def _known_assay(self) -> AssayPayload:
        code, unit = KNOWN_ASSAYS[self.analyte]
        if self.loinc_code != code:
            raise ValueError(f"{self.analyte} results carry LOINC {code}")
        if self.unit != unit:
            raise ValueError(f"{self.analyte} results are in {unit}")
        if not 0 <= self.value <= 1000:
            raise ValueError(f"{self.analyte} must be within 0-1000 {unit}")
        return self


class ConsentPayload(BaseModel):
    """A consent grant or withdrawal (FHIR Consent status, GA4GH DUO scope) with enrolment demographics and zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["consent"]
    action: Literal["GRANT", "WITHDRAW"]
    status: ConsentStatus
    scope: Annotated[list[Annotated[str, Strict(), StringConstraints(pattern=r"^DUO:\d{7}$")]],
                     Field(default_factory=list, max_length=20, description="DUO codes, e.g. DUO:0000042.")]
    participant_name: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200)] | None = None
    birth_date: Annotated[date, BeforeValidator(_text_date)] | None = None
    postcode: Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 -]{1,11}$")] | None = None
    time_zone: Annotated[str, Strict(), StringConstraints(max_length=64), AfterValidator(_iana_zone)] | None = Field(
        default=None, description="The participant's IANA time zone, e.g. Europe/Berlin: stamped on the telemetry "
        "of the participant's devices registered without a zone (the latest event with a zone wins; null: unchanged).",
        examples=["Europe/Berlin"])

    @model_validator(mode="after")
    def _consistent(self) -> ConsentPayload:
        if self.action == "GRANT" and self.status != "ACTIVE":
            raise ValueError("a GRANT results in status ACTIVE")
        if self.action == "WITHDRAW" and self.status == "ACTIVE":
            raise ValueError("a WITHDRAW cannot result in status ACTIVE")
        if self.birth_date is not None and self.birth_date.year < 1900:
            raise ValueError("birth_date before 1900")
        return self


class BiobankEventIn(BaseModel):
    """One LIMS event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: UUID = Field(description="Random UUID assigned by the LIMS; a resend keeps it.")
    participant_id: ParticipantId
    occurred_at: Instant
    recorded_at: Instant | None = Field(default=None, description="When the LIMS recorded it; default: now.")
    operator_name: ShortText | None = Field(default=None, description="LIMS user name (dropped downstream).")
    operator_role: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=50)] | None = None
    comment: LongText | None = Field(default=None, description="Free text (dropped downstream).")
    payload: Annotated[SamplePayload | AssayPayload | ConsentPayload, Field(discriminator="kind")]


class BiobankBatch(BaseModel):
    """Body of POST /v1/biobank/events (Content-Type application/json, optionally Content-Encoding gzip)."""

    events: Annotated[list[BiobankEventIn], Field(min_length=1, max_length=INGEST_MAX_EVENTS_PER_REQUEST)]


class BiobankAnswer(BaseModel):
    """Answer of POST /v1/biobank/events. 202: accepted events are durably in Kafka; 422: none was accepted."""

    accepted: list[str] = Field(description="event_id of every newly accepted event.")
    duplicates: list[str] = Field(description="event_id of events accepted before (nothing was produced again).")
    rejected: list[RejectedItem] = Field(description="Every refused event, with field path and reason.")
    received_at: datetime
