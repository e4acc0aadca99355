"""Biobank sample features: intervals, SPREC, freeze-thaw, excursions, status, assays, lineage, order, duplicates."""

from __future__ import annotations

import random
from typing import Any

import pytest
from biobank_helpers import latest_samples
from features_factories import HOUR, MIN, T0, assay_event, pseudonym, records_of, run, sample_event

from clinstream.core.topics import PSEUDO_BIOBANK
from clinstream.features.biobank import sample_features, sprec

P1 = pseudonym("P-000042")
TUBE, A1, A2 = pseudonym("S-tube"), pseudonym("S-a1"), pseudonym("S-a2")
TOPIC = PSEUDO_BIOBANK.name("site-t")
DAYS = 24 * HOUR


def _events() -> list[bytes]:
    cf = {"g_force": 2000.0, "minutes": 10.0, "temperature_c": 20.0, "braking": True}
    return [
        sample_event(P1, TUBE, "COLLECTED", T0, sample_type="BLD", container="SST", temperature_c=21.0),
        sample_event(P1, TUBE, "RECEIVED", T0 + 30 * MIN, sample_type="BLD", temperature_c=20.0),
        sample_event(P1, TUBE, "CENTRIFUGED", T0 + 90 * MIN, sample_type="BLD", centrifugation=cf),
        sample_event(P1, A1, "ALIQUOTED", T0 + 100 * MIN, parent=TUBE),
        sample_event(P1, A2, "ALIQUOTED", T0 + 100 * MIN, parent=TUBE),
        sample_event(P1, A1, "FROZEN", T0 + 120 * MIN, parent=TUBE, temperature_c=-80.0, storage_band="M60_TO_85"),
        sample_event(P1, A2, "FROZEN", T0 + 125 * MIN, parent=TUBE, temperature_c=-79.0, storage_band="M60_TO_85"),
        sample_event(P1, A1, "THAWED", T0 + 5 * DAYS, parent=TUBE, temperature_c=4.0),
        sample_event(P1, A1, "FROZEN", T0 + 5 * DAYS + HOUR, parent=TUBE, temperature_c=-80.0),
        sample_event(P1, A1, "MOVED", T0 + 6 * DAYS, parent=TUBE, temperature_c=-50.0),  # excursion
        assay_event(P1, A1, "1988-5", 3.2, T0 + 5 * DAYS),
        assay_event(P1, A1, "1988-5", 2.9, T0 + 6 * DAYS),
        sample_event(P1, A2, "DISTRIBUTED", T0 + 7 * DAYS, parent=TUBE),
    ]


_latest = latest_samples


def test_aliquot_features_from_its_lineage() -> None:
    outs, _ = run(records_of([(TOPIC, P1, v) for v in _events()]), version=2)
    got = _latest(outs)
    a1, a2, tube = got[A1], got[A2], got[TUBE]
    assert a1["collected_at"].timestamp() * 1000 == T0  # inherited from the parent
    assert a1["collection_to_centrifugation_min"] == 90.0
    assert a1["collection_to_freezing_min"] == 120.0
    assert a1["sprec"] == "SER-SST-A-B-N-X-X"  # RT 10 min 2000 g braked = B; no post reading, no container
    assert a1["freeze_thaw_count"] == 1
    assert a1["temperature_excursions"] == 1
    assert a1["status"] == "available"
    assert a1["assays"] == {"1988-5": 2.9}
    assert a1["parent_sample_pseudonym"] == TUBE and a1["sample_type"] == "SER"
    assert a1["revision"] == 7 + 3  # own events + the parent's
    assert (a2["status"], a2["freeze_thaw_count"], a2["temperature_excursions"]) == ("distributed", 0, 0)
    assert tube["sprec"] == "BLD-SST-A-B-N-X-X" and tube["collection_to_freezing_min"] is None
    # the store's "available aliquots per sample type per participant" view needs only these columns
    available = {(r["participant_pseudonym"], r["sample_type"]) for r in got.values()
                 if r["parent_sample_pseudonym"] and r["status"] == "available"}
    assert available == {(P1, "SER")}


def test_order_and_duplicates_do_not_change_sample_features() -> None:
    events = _events()
    want = {k: v for k, v in _latest(run(records_of([(TOPIC, P1, v) for v in events]), version=2)[0]).items()}
    rng = random.Random(4)
    for _ in range(3):
        shuffled = events + rng.sample(events, 5)
        rng.shuffle(shuffled)
        got = _latest(run(records_of([(TOPIC, P1, v) for v in shuffled]), batch=3, version=2)[0])
        assert got == want


@pytest.mark.parametrize(("temps", "delay_min", "letter"), [
    ([21.0], 90, "A"), ([4.0, 5.0], 90, "B"), ([22.0], 150, "C"), ([4.0], 200, "D"), ([20.0], 300, "E"),
    ([6.0], 400, "F"), ([24.0], 600, "G"), ([6.0], 9 * 60, "H"), ([20.0], 13 * 60, "I"), ([20.0, 4.0], 60, "Z"),
    ([37.0], 60, "Z"), ([], 60, "X"),
])
def test_pre_centrifugation_letters(temps: list[float], delay_min: int, letter: str) -> None:
    events: dict[str, dict[str, Any]] = {
        "e0": {"t": "COLLECTED", "at": T0, "rec": T0, "st": "PL1", "ct": "PED", "tc": temps[0] if temps else None},
        "e9": {"t": "CENTRIFUGED", "at": T0 + delay_min * MIN, "rec": T0, "st": "PL1"},
    }
    for i, t in enumerate(temps[1:]):
        events[f"e{i + 1}"] = {"t": "RECEIVED", "at": T0 + MIN * (i + 1), "rec": T0, "st": "PL1", "tc": t}
    assert sample_features(events, [])["sprec"] == f"PL1-PED-{letter}-X-N-X-X"


def test_sprec_unknowns_and_non_fluids() -> None:
    assert sprec("DNA", [], T0) is None
    assert sprec("URN", [], None) == "URN-XXX-X-N-N-N-X"
    assert sprec("SER", [{"t": "RECEIVED", "at": T0, "ct": "tube?"}], T0) == "SER-ZZZ-X-N-N-N-X"
