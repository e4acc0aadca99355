"""SPREC 2.0 fluid codes, one test case per code of every element (Lehmann et al. 2012, Table 1).

The expected letters are written out by hand from the table, not computed from `sprec_table`, so that a wrong row
in the data fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from features_factories import HOUR, MIN, T0, decoded, pseudonym, records_of, run, sample_event

from clinstream.core.avro import get_codec
from clinstream.core.topics import PSEUDO_BIOBANK
from clinstream.features import sprec_table
from clinstream.features.biobank import sample_features

Event = dict[str, Any]
RT, COLD = 21.0, 5.0


def _ev(kind: str, at: int, **extra: Any) -> Event:
    return {"t": kind, "at": at, "rec": at, "st": extra.pop("st", "PL1"), **extra}


def _elements(*events: Event) -> list[str]:
    code = sample_features({f"e{i:02d}": e for i, e in enumerate(events)}, [])["sprec"]
    assert code is not None
    return str(code).split("-")


def _cf(celsius: float, minutes: float, g_force: float, braking: bool) -> list[Any]:
    return [g_force, minutes, celsius, braking]


STANDARD_SPIN = _cf(RT, 10, 2000, True)


# --- element 1: type of sample ----------------------------------------------------------------------------------
TABLE_SAMPLE_TYPES = ["ASC", "AMN", "BAL", "BLD", "BMA", "BMK", "BUC", "BUF", "BFF", "CEL", "CEN", "CLN", "CRD",
                      "CSF", "DWB", "NAS", "PEL", "PEN", "PFL", "PL1", "PL2", "RBC", "SAL", "SEM", "SER", "SPT",
                      "STL", "SYN", "TER", "U24", "URN", "URM", "URT"]


@pytest.mark.parametrize("code", TABLE_SAMPLE_TYPES)
def test_sample_type(code: str) -> None:
    assert _elements(_ev("COLLECTED", T0, st=code))[0] == code


def test_sample_type_table_is_complete() -> None:
    assert set(sprec_table.SAMPLE_TYPES) == {*TABLE_SAMPLE_TYPES, "ZZZ"}


@pytest.mark.parametrize("code", ["ZZZ", "DNA", "RNA"])
def test_other_and_non_fluid_types_get_no_fluid_code(code: str) -> None:
    # ZZZ in the LIMS enum covers tissue too, so a fluid code would be a guess.
    assert sample_features({"e": _ev("COLLECTED", T0, st=code)}, [])["sprec"] is None


# --- element 2: type of primary container -------------------------------------------------------------------------
TABLE_CONTAINERS = ["ACD", "ADD", "CAT", "CPD", "CPT", "EDG", "HEP", "HIR", "LHG", "ORG", "PAX", "PED", "PET", "PI1",
                    "PIX", "PPS", "PXD", "PXR", "SCI", "SHP", "SPO", "SST", "TEM", "TRC"]


@pytest.mark.parametrize("code", TABLE_CONTAINERS)
def test_primary_container(code: str) -> None:
    assert _elements(_ev("COLLECTED", T0, ct=code), _ev("RECEIVED", T0 + HOUR, ct="PPS"))[1] == code


def test_primary_container_unknown_and_other() -> None:
    assert set(sprec_table.PRIMARY_CONTAINERS) == {*TABLE_CONTAINERS, "XXX", "ZZZ"}
    assert _elements(_ev("COLLECTED", T0))[1] == "XXX"
    assert _elements(_ev("COLLECTED", T0, ct="SED"))[1] == "ZZZ"  # a SPREC 3.0 container
    assert _elements(_ev("COLLECTED", T0, ct="ZZZ"))[1] == "ZZZ"


# --- element 3: pre-centrifugation --------------------------------------------------------------------------------
@pytest.mark.parametrize(("celsius", "hours", "code"), [
    (RT, 1, "A"), (COLD, 1, "B"), (RT, 3, "C"), (COLD, 3, "D"), (RT, 6, "E"), (COLD, 6, "F"), (RT, 10, "G"),
    (COLD, 10, "H"), (RT, 18, "I"), (COLD, 18, "J"), (RT, 36, "K"), (COLD, 36, "L"), (RT, 72, "M"),
    (COLD, 72, "N"), (None, 1, "X"), (37.0, 1, "Z"),
])
def test_pre_centrifugation(celsius: float | None, hours: float, code: str) -> None:
    spun = T0 + round(hours * HOUR)
    got = _elements(_ev("COLLECTED", T0, tc=celsius), _ev("CENTRIFUGED", spun, cf=STANDARD_SPIN))
    assert got[2] == code


@pytest.mark.parametrize(("hours", "code"), [(2, "C"), (4, "E"), (8, "G"), (12, "I"), (24, "K"), (48, "M")])
def test_pre_centrifugation_band_edges_belong_to_the_longer_band(hours: int, code: str) -> None:
    got = _elements(_ev("COLLECTED", T0, tc=RT), _ev("CENTRIFUGED", T0 + hours * HOUR, cf=STANDARD_SPIN))
    assert got[2] == code


def test_pre_centrifugation_other_and_unknown_cases() -> None:
    mixed = _elements(_ev("COLLECTED", T0, tc=RT), _ev("RECEIVED", T0 + HOUR, tc=COLD),
                      _ev("CENTRIFUGED", T0 + 2 * HOUR, cf=STANDARD_SPIN))
    assert mixed[2] == "Z"
    no_collection = _elements(_ev("RECEIVED", T0, tc=RT), _ev("CENTRIFUGED", T0 + HOUR, cf=STANDARD_SPIN))
    assert no_collection[2] == "X"
    # never centrifuged: processing is the freezing (the table's "delay between collection and processing")
    frozen = _elements(_ev("COLLECTED", T0, tc=COLD), _ev("FROZEN", T0 + 3 * HOUR, tc=-80.0, sb="M60_TO_85"))
    assert frozen[2] == "D"
    assert _elements(_ev("COLLECTED", T0, tc=RT))[2] == "X"  # not processed yet


# --- elements 4 and 5: centrifugation and second centrifugation ---------------------------------------------------
SPINS = [
    (RT, 10, 2000, False, "A"), (RT, 10, 2000, True, "B"), (COLD, 10, 2000, False, "C"), (COLD, 15, 2000, True, "D"),
    (RT, 12, 4000, True, "E"), (COLD, 10, 3000, True, "F"), (RT, 10, 6000, True, "G"), (COLD, 10, 10000, True, "H"),
    (RT, 10, 12000, True, "I"), (COLD, 10, 15000, True, "J"),
]
OTHER_SPINS = [(RT, 10, 4000, False), (37.0, 10, 2000, True), (RT, 20, 2000, True), (COLD, 30, 500, False)]


@pytest.mark.parametrize(("celsius", "minutes", "g_force", "braking", "code"),
                         [*SPINS, (RT, 30, 500, False, "M")])
def test_centrifugation(celsius: float, minutes: float, g_force: float, braking: bool, code: str) -> None:
    got = _elements(_ev("COLLECTED", T0, tc=RT), _ev("CENTRIFUGED", T0 + HOUR, cf=_cf(celsius, minutes, g_force,
                                                                                       braking)))
    assert got[3] == code


@pytest.mark.parametrize("spin", OTHER_SPINS)
def test_centrifugation_other(spin: tuple[float, float, float, bool]) -> None:
    got = _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR, cf=_cf(*spin)))
    assert got[3] == "Z"


def test_centrifugation_none_and_unknown() -> None:
    assert _elements(_ev("COLLECTED", T0))[3:5] == ["N", "N"]
    assert _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR))[3] == "X"  # parameters not recorded


@pytest.mark.parametrize(("celsius", "minutes", "g_force", "braking", "code"), SPINS)
def test_second_centrifugation(celsius: float, minutes: float, g_force: float, braking: bool, code: str) -> None:
    got = _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR, cf=STANDARD_SPIN),
                    _ev("CENTRIFUGED", T0 + 2 * HOUR, cf=_cf(celsius, minutes, g_force, braking)))
    assert got[3:5] == ["B", code]


@pytest.mark.parametrize("spin", [*OTHER_SPINS, (RT, 30, 500, False)])  # M is a first-centrifugation row only
def test_second_centrifugation_other(spin: tuple[float, float, float, bool]) -> None:
    got = _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR, cf=STANDARD_SPIN),
                    _ev("CENTRIFUGED", T0 + 2 * HOUR, cf=_cf(*spin)))
    assert got[4] == "Z"


# --- element 6: post-centrifugation delay -------------------------------------------------------------------------
def _post(celsius: float | None, hours: float, *more: Event) -> str:
    spun_end = T0 + HOUR + 10 * MIN  # the standard spin lasts 10 min
    return _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR, cf=STANDARD_SPIN),
                     _ev("ALIQUOTED", spun_end + MIN, tc=celsius), *more,
                     _ev("FROZEN", spun_end + round(hours * HOUR), tc=-80.0, sb="M60_TO_85"))[5]


@pytest.mark.parametrize(("celsius", "hours", "code"), [
    (COLD, 0.5, "A"), (RT, 0.5, "B"), (COLD, 1.5, "C"), (RT, 1.5, "D"), (COLD, 5, "E"), (RT, 5, "F"),
    (COLD, 12, "G"), (RT, 12, "H"), (COLD, 30, "I"), (RT, 30, "J"), (None, 1, "X"), (37.0, 1, "Z"),
])
def test_post_centrifugation(celsius: float | None, hours: float, code: str) -> None:
    assert _post(celsius, hours) == code


def test_post_centrifugation_none_mixed_and_not_yet_stored() -> None:
    assert _elements(_ev("COLLECTED", T0), _ev("FROZEN", T0 + HOUR, sb="M60_TO_85"))[5] == "N"
    assert _post(RT, 3, _ev("RECEIVED", T0 + 2 * HOUR, tc=COLD)) == "Z"
    not_stored = _elements(_ev("COLLECTED", T0), _ev("CENTRIFUGED", T0 + HOUR, cf=STANDARD_SPIN),
                           _ev("ALIQUOTED", T0 + 2 * HOUR, tc=RT))
    assert not_stored[5] == "X"


# --- element 7: long-term storage -------------------------------------------------------------------------------
@pytest.mark.parametrize(("container", "bands", "programmable", "code"), [
    ("PP_TUBE_0_5_TO_2ML", ["M60_TO_85"], False, "A"), ("PP_TUBE_0_5_TO_2ML", ["M18_TO_35"], False, "B"),
    ("CRYOTUBE_1_TO_2ML", ["LN2_LIQUID"], False, "C"), ("CRYOTUBE_1_TO_2ML", ["M60_TO_85"], False, "D"),
    ("CRYOTUBE_1_TO_2ML", ["BELOW_M135"], True, "E"), ("PLASTIC_CRYO_STRAW", ["LN2_VAPOUR"], False, "F"),
    ("STRAW", ["M60_TO_85"], False, "G"), ("STRAW", ["M18_TO_35"], False, "H"), ("STRAW", ["BELOW_M135"], True, "I"),
    ("PP_TUBE_5ML_OR_MORE", ["M60_TO_85"], False, "J"), ("PP_TUBE_5ML_OR_MORE", ["M18_TO_35"], False, "K"),
    ("MICROPLATE", ["M60_TO_85"], False, "L"), ("MICROPLATE", ["M18_TO_35"], False, "M"),
    ("CRYOTUBE_1_TO_2ML", ["M60_TO_85", "LN2_VAPOUR"], False, "N"),
    ("PLASTIC_CRYO_STRAW", ["M60_TO_85", "LN2_LIQUID"], False, "O"), ("PARAFFIN_BLOCK", ["RT"], False, "P"),
    ("PARAFFIN_BLOCK", ["C2_TO_10"], False, "P"), ("BAG", ["LN2_LIQUID"], False, "Q"),
    ("DRY_TECHNOLOGY_MEDIUM", ["RT"], False, "R"), (None, ["M60_TO_85"], False, "X"),
    ("CRYOTUBE_1_TO_2ML", [], False, "X"), ("CRYOTUBE_1_TO_2ML", ["BELOW_M135"], False, "Z"),
    ("OTHER", ["M60_TO_85"], False, "Z"), ("BAG", ["M60_TO_85"], False, "Z"),
])
def test_long_term_storage(container: str | None, bands: list[str], programmable: bool, code: str) -> None:
    events = [_ev("COLLECTED", T0), _ev("FROZEN", T0 + HOUR, sb=bands[0] if bands else None, sc=container,
                                       pf=programmable)]
    events += [_ev("MOVED", T0 + (2 + i) * HOUR, sb=band) for i, band in enumerate(bands[1:])]
    assert _elements(*events)[6] == code


def test_long_term_storage_ends_with_a_thaw() -> None:
    stored = [_ev("COLLECTED", T0), _ev("FROZEN", T0 + HOUR, sb="M60_TO_85", sc="CRYOTUBE_1_TO_2ML")]
    assert _elements(*stored)[6] == "D"
    assert _elements(*stored, _ev("THAWED", T0 + 2 * HOUR, tc=RT))[6] == "X"
    # the latest recorded container still applies; a cryotube at (-35) to (-18) degC has no row
    assert _elements(*stored, _ev("THAWED", T0 + 2 * HOUR), _ev("FROZEN", T0 + 3 * HOUR, sb="M18_TO_35"))[6] == "Z"
    refrozen_ln = _elements(*stored, _ev("THAWED", T0 + 2 * HOUR), _ev("FROZEN", T0 + 3 * HOUR, sb="LN2_LIQUID"))
    assert refrozen_ln[6] == "C"  # the (-85) to (-60) stage was in an earlier episode, not "LN after temporary"


# --- the whole code through the real processor, from encoded events with the new LIMS fields ----------------------
def test_full_code_through_the_processor() -> None:
    participant, tube = pseudonym("P-sprec"), pseudonym("S-sprec")
    topic = PSEUDO_BIOBANK.name("site-t")
    spin = {"g_force": 2500.0, "minutes": 15.0, "temperature_c": 4.0, "braking": False}
    values = [
        sample_event(participant, tube, "COLLECTED", T0, sample_type="PL1", container="PED", temperature_c=4.0),
        sample_event(participant, tube, "CENTRIFUGED", T0 + 3 * HOUR, sample_type="PL1", centrifugation=spin),
        sample_event(participant, tube, "RECEIVED", T0 + 3 * HOUR + 20 * MIN, sample_type="PL1", temperature_c=20.0),
        _with_storage(sample_event(participant, tube, "FROZEN", T0 + 5 * HOUR, sample_type="PL1",
                                   temperature_c=-150.0, storage_band="BELOW_M135"), "STRAW", True),
    ]
    outs, _ = run(records_of([(topic, participant, v) for v in values]), version=2)
    rows = [rec for rec, _ in decoded(outs, ".feature.sample.v1")]
    assert max(rows, key=lambda r: r["revision"])["sprec"] == "PL1-PED-D-C-N-D-I"


def _with_storage(value: bytes, container: str, programmable: bool) -> bytes:
    codec = get_codec()
    record = codec.decode(value)
    name, body = record["payload"]
    record["payload"] = (name, {**body, "storage_container": container, "programmable_freezing": programmable})
    return codec.encode(PSEUDO_BIOBANK.value_schema, record)
