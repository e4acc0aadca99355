"""The LIMS fields SPREC's long-term storage needs travel from the API model through the pseudonymiser to features."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from clinstream.core.avro import get_codec
from clinstream.features.biobank import compact_event
from clinstream.ingest.biobank_models import SamplePayload
from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.minimise import minimise_biobank_event
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

T0 = 1_767_225_600_000
PSEUDONYMISER = Pseudonymiser(KeyRing(1, {1: bytes(32)}))
SAMPLE = {"kind": "sample", "event_type": "FROZEN", "sample_id": "BC-SYN-1", "sample_type": "PL1",
          "temperature_c": -150.0, "storage_band": "BELOW_M135"}


def _raw(payload: dict[str, Any]) -> dict[str, Any]:
    body = SamplePayload.model_validate(payload).model_dump(exclude={"kind"})
    return {"event_id": str(uuid.uuid4()), "site_id": "site-a", "participant_id": "P-000001", "occurred_at": T0,
            "recorded_at": T0 + 500, "operator_role": "technician",
            "payload": ("org.clinstream.biobank.SampleEvent", body)}


def _compact(raw: dict[str, Any]) -> dict[str, Any]:
    codec = get_codec()
    raw_back = codec.decode(codec.encode("org.clinstream.biobank.BiobankEvent", raw))
    pseudo = minimise_biobank_event(raw_back, PSEUDONYMISER)
    decoded = codec.decode(codec.encode("org.clinstream.biobank.PseudonymisedBiobankEvent", pseudo))
    compact = compact_event(decoded)
    assert compact is not None
    return compact[1]


def test_storage_container_and_programmable_freezing_reach_the_features() -> None:
    ev = _compact(_raw({**SAMPLE, "storage_container": "STRAW", "programmable_freezing": True}))
    assert (ev["sc"], ev["pf"], ev["sb"]) == ("STRAW", True, "BELOW_M135")


def test_the_fields_are_optional() -> None:
    ev = _compact(_raw(SAMPLE))
    assert (ev["sc"], ev["pf"]) == (None, None)


@pytest.mark.parametrize(("field", "value"), [("storage_container", "FREEZER_BOX"), ("programmable_freezing", "yes")])
def test_bad_values_are_rejected_by_the_api_model(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        SamplePayload.model_validate({**SAMPLE, field: value})
    assert field in str(err.value)
