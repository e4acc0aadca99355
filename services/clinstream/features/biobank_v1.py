"""Lineage and SPREC as feature version 1 derived them, kept unchanged so that version-1 rows stay reproducible.

Version 1 cut every ancestor at the sample's own first event and coded SPREC from the reference's short list:
pre-centrifugation A-G (RT 15-25 degC, cold 2-10 degC; anything else Z), centrifugation and second
centrifugation N or X, post-centrifugation and storage X. Version 2 (`biobank`) replaces both (issue 11).
"""

from __future__ import annotations

import re
from typing import Any

from clinstream.core.timeutil import MINUTE_MS

Event = dict[str, Any]

_LINEAGE_TYPES = frozenset({"COLLECTED", "RECEIVED", "CENTRIFUGED", "FROZEN", "THAWED"})
_FLUID_TYPES = frozenset({"BLD", "SER", "PL1", "PL2", "URN", "SAL", "CSF"})
_CONTAINER_RE = re.compile(r"^[A-Z]{3}$")
_RT_C = (15.0, 25.0)
_COLD_C = (2.0, 10.0)
_HOUR_MS = 60 * MINUTE_MS
_PRE_CENTRIFUGATION: tuple[tuple[float, str | None, str | None], ...] = (
    (2, "A", "B"), (4, "C", "D"), (8, "E", "F"), (12, "G", None),
)


def lineage(own: dict[str, Event], ancestors: list[dict[str, Event]]) -> list[Event]:
    """Own events plus every ancestor's processing events up to the sample's first own event, sorted."""
    first_own = min((e["at"] for e in own.values()), default=None)
    merged: dict[str, Event] = dict(own)
    for anc in ancestors:
        for eid, e in anc.items():
            if e["t"] in _LINEAGE_TYPES and (first_own is None or e["at"] <= first_own):
                merged.setdefault(eid, e)
    return [e for _, e in sorted(merged.items(), key=lambda kv: (kv[1]["at"], kv[0]))]


def _in(value: float, band: tuple[float, float]) -> bool:
    return band[0] <= value <= band[1]


def _pre_centrifugation(events: list[Event], collected: int | None, spun: int | None) -> str:
    if collected is None:
        return "X"
    if spun is None:
        return "Z"
    hours = (spun - collected) / _HOUR_MS
    if hours < 0:
        return "X"
    temps = [e["tc"] for e in events if e.get("tc") is not None and collected <= e["at"] < spun]
    if not temps:
        return "X"
    if all(_in(t, _RT_C) for t in temps):
        column = 1
    elif all(_in(t, _COLD_C) for t in temps):
        column = 2
    else:
        return "Z"
    for upper, *letters in _PRE_CENTRIFUGATION:
        if hours < upper:
            return letters[column - 1] or "Z"
    return "Z"


def sprec(sample_type: str, events: list[Event], collected: int | None) -> str | None:
    """The version-1 SPREC code of a fluid sample (None for non-fluid types)."""
    if sample_type not in _FLUID_TYPES:
        return None
    spins = [e["at"] for e in events if e["t"] == "CENTRIFUGED"]
    containers = [e["ct"] for e in events if e.get("ct")]
    container = "XXX" if not containers else containers[-1] if _CONTAINER_RE.match(containers[-1]) else "ZZZ"
    pre = _pre_centrifugation(events, collected, spins[0] if spins else None)
    first = "N" if not spins else "X"
    second = "N" if len(spins) < 2 else "X"
    return f"{sample_type}-{container}-{pre}-{first}-{second}-X-X"
