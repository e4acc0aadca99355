"""Minimisation: generalised birth dates and postcodes, dropped identifiers, and schemas without identifier fields."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pseudonymise_factories import T0, Feed, assay, block, consent, encode_block, sample_event

from clinstream.core.avro import get_codec
from clinstream.core.topics import ALL_TOPICS, PSEUDO_TELEMETRY, Zone
from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.minimise import (
    MinimisationError,
    coarsen_postcode,
    generalise_birth_date,
    generalise_role,
    minimise_biobank_event,
)
from clinstream.pseudonymise.processor import PseudonymiseProcessor
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

RING = KeyRing(1, {1: bytes(32)})
P = Pseudonymiser(RING)
IDENTIFYING_FIELDS = {
    "participant_id", "device_id", "sample_id", "parent_sample_id", "participant_name", "operator_name",
    "comment", "birth_date", "postcode", "storage_location", "shipment_reference", "disposal_reason", "name",
    "serial", "barcode", "address", "email", "phone",
}


def ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, 12, tzinfo=UTC).timestamp() * 1000)


def test_birth_date_becomes_year_and_ninety_plus() -> None:
    assert generalise_birth_date(date(1980, 5, 17), ms(date(2026, 1, 1))) == "1980"
    assert generalise_birth_date(date(1936, 1, 2), ms(date(2026, 1, 1))) == "1936"  # 89 the day before
    assert generalise_birth_date(date(1936, 1, 1), ms(date(2026, 1, 1))) == "90+"  # 90th birthday
    assert generalise_birth_date(date(1900, 1, 1), ms(date(2026, 1, 1))) == "90+"
    assert generalise_birth_date(None, 0) is None
    with pytest.raises(MinimisationError):
        generalise_birth_date(date(2027, 1, 1), ms(date(2026, 1, 1)))


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31)),
       st.dates(min_value=date(2026, 1, 1), max_value=date(2040, 12, 31)))
def test_generalised_birth_never_reveals_more_than_year_or_age_band(birth: date, on: date) -> None:
    out = generalise_birth_date(birth, datetime(on.year, on.month, on.day, tzinfo=UTC))
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    assert out == ("90+" if age >= 90 else str(birth.year))


@pytest.mark.parametrize(("raw", "region"), [
    ("SW1A 1AA", "SW"), ("b1 1aa", "B1"), ("1234 AB", "12"), (" 75 001", "75"), ("", None), ("X", None),
    ("--", None), (None, None),
])
def test_postcode_is_coarsened_to_two_characters(raw: str | None, region: str | None) -> None:
    assert coarsen_postcode(raw) == region


@given(st.text(max_size=20))
def test_postcode_region_is_at_most_two_ascii_alphanumerics(raw: str) -> None:
    region = coarsen_postcode(raw)
    assert region is None or (len(region) == 2 and region.isascii() and region.isalnum())


def test_roles_outside_the_vocabulary_become_other() -> None:
    assert generalise_role("Research Nurse") == "research_nurse"
    assert generalise_role("Testa Synthetica") == "other"
    assert generalise_role(None) is None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def test_biobank_events_lose_every_identifier() -> None:
    known = ["P-000123", "BC-SYN-778899", "BC-SYN-PARENT-1", "Testa Synthetica", "Opera Torrent",
             "Freezer-7", "SHIP-SYN-42", "SW1A", "1980-05-17", "free text scope"]
    for raw in (sample_event(), assay(), consent()):
        out = minimise_biobank_event(raw, P)
        get_codec().encode("org.clinstream.biobank.PseudonymisedBiobankEvent", out)  # fits the schema
        text = "\n".join(_strings(out))
        assert not [k for k in known if k in text]
    generalised = minimise_biobank_event(consent(), P)["payload"][1]
    assert generalised["birth_year"] == "1980" and generalised["region"] == "SW"
    assert generalised["scope"] == ["DUO:0000042"]


@pytest.mark.parametrize("verify", [True, False])
def test_blocks_keep_measurements_and_replace_identifiers(verify: bool) -> None:
    """Production's own path (the processor's header rewrite around the untouched measurement bytes)."""
    raw = block()
    feed = Feed()
    proc = PseudonymiseProcessor("site-a", RING, {})
    proc.verify_measurements = verify
    result = proc.process([feed.event(consent(at=T0 - 1000)), feed.block(raw)])
    [value] = [o.value for o in result.out if o.topic == PSEUDO_TELEMETRY.name("site-a")]
    out = get_codec().decode(value, reader="org.clinstream.telemetry.PseudonymisedTelemetryBlock")
    assert out["measurement"] == get_codec().decode(encode_block(raw))["measurement"]
    assert out["participant_pseudonym"] == P.participant("P-000123")
    assert out["device_pseudonym"] == P.device("SN-SYN-0001")
    assert (str(out["block_id"]), out["sequence"], out["key_version"]) == (raw["block_id"], raw["sequence"], 1)
    assert b"P-000123" not in value and b"SN-SYN-0001" not in value


def test_assay_with_text_in_a_code_field_is_invalid() -> None:
    bad = assay()
    bad["payload"][1]["loinc_code"] = "Testa Synthetica"
    with pytest.raises(MinimisationError) as err:
        minimise_biobank_event(bad, P)
    assert "Testa" not in str(err.value) and err.value.field_path == "payload.loinc_code"


def _field_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for f in schema.get("fields", []):
            names.add(f["name"])
            names |= _field_names(f["type"])
        for key in ("items", "values"):
            if key in schema:
                names |= _field_names(schema[key])
    elif isinstance(schema, list):
        for branch in schema:
            names |= _field_names(branch)
    return names


def test_no_schema_downstream_of_the_pseudonymiser_has_an_identifier_field() -> None:
    cat = get_codec().catalogue
    checked = 0
    for spec in ALL_TOPICS:
        if spec.zone is Zone.RAW:
            continue
        fields = _field_names(cat.parsed[spec.value_schema])
        assert not fields & IDENTIFYING_FIELDS, (spec.dataset, fields & IDENTIFYING_FIELDS)
        checked += 1
    assert checked >= 8
