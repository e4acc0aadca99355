"""Sample lineage over three generations: each ancestor's history is cut where its own line was split off.

All through the real feature processor from encoded events, plus hypothesis for order and duplicate independence.
"""

from __future__ import annotations

from typing import Any

from biobank_helpers import CHILD, GP, P1, PARENT, SECOND_SPIN, SPIN, latest_samples, three_generations
from features_factories import DAY, T0, records_of, run, sample_event
from hypothesis import given, settings
from hypothesis import strategies as st

from clinstream.core.topics import PSEUDO_BIOBANK

TOPIC = PSEUDO_BIOBANK.name("site-t")
_family = three_generations


def _latest(values: list[bytes], batch: int = 500, version: int = 2) -> dict[str, dict[str, Any]]:
    return latest_samples(run(records_of([(TOPIC, P1, v) for v in values]), batch=batch, version=version)[0])


def test_three_generations_inherit_only_up_to_each_split() -> None:
    got = _latest(_family())
    gp, parent, child = got[GP], got[PARENT], got[CHILD]
    # grandparent: its own three thaws... of which two are its own history after freezing
    assert gp["freeze_thaw_count"] == 2
    # parent: the grandparent's thaw before the parent's split, and its own two thaws
    assert parent["freeze_thaw_count"] == 3
    # child: the grandparent's thaw before the PARENT's split (not the one before the child's split), the parent's
    # thaw before the child's split, and its own
    assert child["freeze_thaw_count"] == 3
    # pre-centrifugation and centrifugation come from the grandparent's history before the split
    for rec in (parent, child):
        assert rec["collected_at"] == gp["collected_at"]
        assert rec["collection_to_centrifugation_min"] == 60.0
    assert gp["sprec"] == "BLD-PED-A-B-J-X-X"  # its own second spin (cold >10000 g) after the split
    # the grandparent's second centrifugation after the parent's split is not the parent's or the child's
    assert parent["sprec"] == "PL1-PED-A-B-N-X-X"
    assert child["sprec"] == "PL1-PED-A-B-N-X-X"


def test_version_1_rows_stay_reproducible() -> None:
    # feature version 1 cut every ancestor at the child's first own event and coded SPREC from the short list
    got = _latest(_family(), version=1)
    assert [got[s]["freeze_thaw_count"] for s in (GP, PARENT, CHILD)] == [2, 3, 4]
    assert got[CHILD]["sprec"] == "PL1-PED-A-X-X-X-X" and got[CHILD]["version"] == 1  # the late GP spin counted
    assert _latest(_family())[CHILD]["version"] == 2


def test_parent_thaw_after_the_split_is_not_the_childs() -> None:
    family = _family()
    late_parent_thaws = [sample_event(P1, PARENT, "THAWED", T0 + (6 + i) * DAY, sample_type="PL1", parent=GP)
                         for i in range(3)]
    late_gp_thaw = [sample_event(P1, GP, "THAWED", T0 + 2 * DAY, sample_type="BLD")]  # before the child's split
    before, after = _latest(family), _latest(family + late_parent_thaws + late_gp_thaw)
    assert after[CHILD]["freeze_thaw_count"] == before[CHILD]["freeze_thaw_count"]
    assert after[PARENT]["freeze_thaw_count"] == before[PARENT]["freeze_thaw_count"] + 3
    assert after[GP]["freeze_thaw_count"] == before[GP]["freeze_thaw_count"] + 1


def test_split_falls_back_to_the_first_own_event() -> None:
    # without ALIQUOTED events, a sample's line leaves its parent at its own first event
    values = _family(aliquoted=False)
    got = _latest(values)
    assert got[PARENT]["freeze_thaw_count"] == 3 and got[CHILD]["freeze_thaw_count"] == 3


_KINDS = ("RECEIVED", "CENTRIFUGED", "FROZEN", "STORED", "MOVED", "THAWED")
# Whole hours, like the family's events: many events share an instant with each other and with the splits.
_event = st.tuples(st.sampled_from((GP, PARENT, CHILD)), st.sampled_from(_KINDS),
                   st.integers(0, 6 * 24).map(lambda hours: hours * 60),
                   st.one_of(st.none(), st.sampled_from((-80.0, 4.0, 21.0, 37.0))))


def _encode(sample: str, kind: str, minute: int, celsius: float | None, n: int) -> bytes:
    parent = {GP: None, PARENT: GP, CHILD: PARENT}[sample]
    extra: dict[str, Any] = {}
    if kind == "CENTRIFUGED":
        extra["centrifugation"] = SPIN if minute % 2 else SECOND_SPIN
    if kind in ("FROZEN", "STORED", "MOVED"):
        extra["storage_band"] = "M60_TO_85" if minute % 3 else "LN2_VAPOUR"
    return sample_event(P1, sample, kind, T0 + minute * 60_000, sample_type="BLD" if sample == GP else "PL1",
                        parent=parent, temperature_c=celsius, event_id=f"00000000-0000-4000-8000-{n:012d}",
                        **extra)


@settings(max_examples=40, deadline=None)
@given(events=st.lists(_event, min_size=1, max_size=20), order=st.randoms(use_true_random=False),
       redelivered=st.lists(st.integers(0, 40), max_size=8), batch=st.integers(1, 6))
def test_lineage_features_ignore_order_and_redelivery(events: list[tuple[str, str, int, float | None]],
                                                      order: Any, redelivered: list[int], batch: int) -> None:
    values = _family() + [_encode(*e, n) for n, e in enumerate(events)]
    want = _latest(values)
    shuffled = values + [values[i % len(values)] for i in redelivered]
    order.shuffle(shuffled)
    assert _latest(shuffled, batch=batch) == want
