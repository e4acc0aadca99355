"""Shared helpers of the biobank feature tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from features_factories import DAY, HOUR, T0, decoded, pseudonym, sample_event

from clinstream.core.records import OutRecord


def latest_samples(outs: Iterable[OutRecord]) -> dict[str, dict[str, Any]]:
    """What an upserting store keeps: per sample pseudonym the sample feature record of the highest revision."""
    best: dict[str, dict[str, Any]] = {}
    for rec, _ in decoded(outs, ".feature.sample.v1"):
        cur = best.get(rec["sample_pseudonym"])
        if cur is None or rec["revision"] > cur["revision"]:
            best[rec["sample_pseudonym"]] = rec
    return best


P1 = pseudonym("P-lineage")
GP, PARENT, CHILD = pseudonym("S-gp"), pseudonym("S-parent"), pseudonym("S-child")
SPIN = {"g_force": 2000.0, "minutes": 10.0, "temperature_c": 20.0, "braking": True}
SECOND_SPIN = {"g_force": 12000.0, "minutes": 10.0, "temperature_c": 4.0, "braking": True}


def three_generations(aliquoted: bool = True) -> list[bytes]:
    """Grandparent (whole blood) -> parent (plasma) -> child (aliquot), thaws before and after each split."""
    def gp(kind: str, at: int, **kw: Any) -> bytes:
        return sample_event(P1, GP, kind, at, sample_type="BLD", **kw)

    def parent(kind: str, at: int, **kw: Any) -> bytes:
        return sample_event(P1, PARENT, kind, at, sample_type="PL1", parent=GP, **kw)

    def child(kind: str, at: int, **kw: Any) -> bytes:
        return sample_event(P1, CHILD, kind, at, sample_type="PL1", parent=PARENT, **kw)

    events = [
        gp("COLLECTED", T0, container="PED", temperature_c=21.0),
        gp("CENTRIFUGED", T0 + HOUR, centrifugation=SPIN),
        gp("FROZEN", T0 + 2 * HOUR, temperature_c=-80.0, storage_band="M60_TO_85"),
        gp("THAWED", T0 + DAY, temperature_c=4.0),                   # before the parent's split: everyone's
        parent("ALIQUOTED", T0 + DAY + HOUR, temperature_c=4.0),      # the parent's line leaves the grandparent
        gp("THAWED", T0 + DAY + 12 * HOUR, temperature_c=4.0),       # after it: the grandparent's only
        gp("CENTRIFUGED", T0 + DAY + 13 * HOUR, centrifugation=SECOND_SPIN),  # likewise
        parent("FROZEN", T0 + DAY + 2 * HOUR, temperature_c=-80.0, storage_band="M60_TO_85"),
        parent("THAWED", T0 + 2 * DAY, temperature_c=4.0),           # before the child's split: the child's too
        child("ALIQUOTED", T0 + 2 * DAY + HOUR, temperature_c=4.0),   # the child's line leaves the parent
        parent("FROZEN", T0 + 2 * DAY + 2 * HOUR, temperature_c=-80.0, storage_band="M60_TO_85"),
        parent("THAWED", T0 + 4 * DAY, temperature_c=4.0),           # after it: the parent's only
        child("FROZEN", T0 + 2 * DAY + 2 * HOUR, temperature_c=-80.0, storage_band="M60_TO_85"),
        child("THAWED", T0 + 5 * DAY, temperature_c=4.0),            # the child's own
    ]
    return events if aliquoted else [v for i, v in enumerate(events) if i not in (4, 9)]  # no ALIQUOTED events
