"""Per-sample biobank features from a sample's events and its lineage: intervals, SPREC, freeze-thaw, status.

Events are kept in compact form (`compact_event`) and always evaluated sorted by (occurred_at, event_id), so the
result does not depend on arrival order. A sample's *lineage* is its own events plus the processing events
(collection, receipt, centrifugation, freezing, thawing) of its ancestors that happened no later than the
sample's first own event: an aliquot inherits its parent's collection time and pre-analytical history.

SPREC (fluid samples only: BLD, SER, PL1, PL2, URN, SAL, CSF), element by element:

1. sample type: the sample's type code;
2. primary container: the latest container code of the lineage (3 capital letters; else ZZZ), XXX if none;
3. pre-centrifugation: the reference's letters A-G from the delay between collection and the first
   centrifugation and the temperatures recorded on lineage events in between (RT 15-25 degC, cold 2-10 degC):
   A RT <2 h, B cold <2 h, C RT 2-4 h, D cold 2-4 h, E RT 4-8 h, F cold 4-8 h, G RT 8-12 h; Z (other) when the
   facts are known but outside A-G (longer delays, mixed or other temperatures, no centrifugation); X (unknown)
   when the collection time, the centrifugation time or every temperature is missing;
4. centrifugation: N if the lineage was never centrifuged, else X;
5. second centrifugation: N if the lineage was centrifuged at most once, else X;
6. post-centrifugation delay and 7. long-term storage: X.
   Elements 4-7 need the ISBER code tables, which the project's reference does not give; the facts they would
   encode are available as the interval columns and the events. The letters are never guessed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from clinstream.core.timeutil import MINUTE_MS, to_ms

Event = dict[str, Any]

ASSAY = "ASSAY"
FLUID_TYPES = frozenset({"BLD", "SER", "PL1", "PL2", "URN", "SAL", "CSF"})
_LINEAGE_TYPES = frozenset({"COLLECTED", "RECEIVED", "CENTRIFUGED", "FROZEN", "THAWED"})
_CONTAINER_RE = re.compile(r"^[A-Z]{3}$")
RT_C = (15.0, 25.0)
COLD_C = (2.0, 10.0)
# Temperature range (degC, inclusive) of each SPREC storage band; an in-storage reading outside is an excursion.
STORAGE_BAND_C: dict[str, tuple[float, float]] = {
    "RT": RT_C,
    "C2_TO_10": COLD_C,
    "M18_TO_35": (-35.0, -18.0),
    "M60_TO_85": (-85.0, -60.0),
    "BELOW_M135": (-273.15, -135.0),
    "LN2_VAPOUR": (-273.15, -135.0),
    "LN2_LIQUID": (-273.15, -180.0),
}
_HOUR_MS = 60 * MINUTE_MS
# (upper bound of the delay in hours, RT letter, cold letter) from the reference's SPREC list.
_PRE_CENTRIFUGATION: tuple[tuple[float, str | None, str | None], ...] = (
    (2, "A", "B"), (4, "C", "D"), (8, "E", "F"), (12, "G", None),
)


def compact_event(record: dict[str, Any]) -> tuple[str, Event] | None:
    """(sample pseudonym, compact event) of a decoded PseudonymisedBiobankEvent; None for consent events."""
    name, body = record["payload"]
    base: Event = {"at": to_ms(record["occurred_at"]), "rec": to_ms(record["recorded_at"])}
    if name.endswith("PseudonymisedSampleEvent"):
        cf = body.get("centrifugation")
        base.update({
            "t": body["event_type"], "st": body["sample_type"], "par": body.get("parent_sample_pseudonym"),
            "ct": body.get("container"), "tc": body.get("temperature_c"), "sb": body.get("storage_band"),
            "cf": [cf["g_force"], cf["minutes"], cf["temperature_c"], bool(cf.get("braking", True))] if cf else None,
        })
        return body["sample_pseudonym"], base
    if name.endswith("PseudonymisedAssayResult"):
        base.update({"t": ASSAY, "loinc": body["loinc_code"], "val": float(body["value"])})
        return body["sample_pseudonym"], base
    return None


def _sorted(events: dict[str, Event]) -> list[tuple[str, Event]]:
    return sorted(events.items(), key=lambda kv: (kv[1]["at"], kv[0]))


def lineage(own: dict[str, Event], ancestors: list[dict[str, Event]]) -> list[Event]:
    """The sample's own events plus its ancestors' processing events up to its first own event, sorted."""
    first_own = min((e["at"] for e in own.values()), default=None)
    merged: dict[str, Event] = dict(own)
    for anc in ancestors:
        for eid, e in anc.items():
            if e["t"] in _LINEAGE_TYPES and (first_own is None or e["at"] <= first_own):
                merged.setdefault(eid, e)
    return [e for _, e in _sorted(merged)]


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
    if all(_in(t, RT_C) for t in temps):
        column = 1
    elif all(_in(t, COLD_C) for t in temps):
        column = 2
    else:
        return "Z"
    for upper, *letters in _PRE_CENTRIFUGATION:
        if hours < upper:
            return letters[column - 1] or "Z"
    return "Z"


def sprec(sample_type: str, events: list[Event], collected: int | None, spins: list[int]) -> str | None:
    """The derived SPREC code of a fluid sample (None for non-fluid types); see the module doc."""
    if sample_type not in FLUID_TYPES:
        return None
    containers = [e["ct"] for e in events if e.get("ct")]
    container = "XXX" if not containers else containers[-1] if _CONTAINER_RE.match(containers[-1]) else "ZZZ"
    pre = _pre_centrifugation(events, collected, spins[0] if spins else None)
    first = "N" if not spins else "X"
    second = "N" if len(spins) < 2 else "X"
    return f"{sample_type}-{container}-{pre}-{first}-{second}-X-X"


def _excursions(own: list[Event]) -> int:
    band: str | None = None
    stored = False
    count = 0
    for e in own:
        kind = e["t"]
        if kind in ("FROZEN", "STORED", "MOVED"):
            band = e.get("sb") or band
            stored = stored or kind != "MOVED"
        elif kind in ("THAWED", "SHIPPED", "DISTRIBUTED", "DISPOSED"):
            stored = False
        tc = e.get("tc")
        if stored and band in STORAGE_BAND_C and tc is not None and not _in(tc, STORAGE_BAND_C[band]):
            count += 1
    return count


def _status(own: list[Event]) -> str:
    status = "available"
    for e in own:
        kind = e["t"]
        if kind == "DISPOSED":
            status = "disposed"
        elif kind == "DISTRIBUTED":
            status = "distributed"
        elif status in ("disposed", "distributed"):
            continue
        elif kind == "SHIPPED":
            status = "shipped"
        elif kind != ASSAY:
            status = "available"
    return status


def sample_features(own_events: dict[str, Event], ancestors: list[dict[str, Event]]) -> dict[str, Any]:
    """The SampleFeatureRecord columns derived from a sample's events and its ancestors' (parent first)."""
    own = [e for _, e in _sorted(own_events)]
    lin = lineage(own_events, ancestors)
    sample_events = [e for e in own if e["t"] != ASSAY]
    sample_type = sample_events[-1]["st"] if sample_events else "ZZZ"
    parents = [e["par"] for e in sample_events if e.get("par")]
    collected = next((e["at"] for e in lin if e["t"] == "COLLECTED"), None)
    spins = [e["at"] for e in lin if e["t"] == "CENTRIFUGED"]
    frozen = next((i for i, e in enumerate(lin) if e["t"] == "FROZEN"), None)
    assays: dict[str, float] = {}
    for e in own:
        if e["t"] == ASSAY:
            assays[e["loinc"]] = e["val"]
    return {
        "parent_sample_pseudonym": parents[-1] if parents else None,
        "sample_type": sample_type,
        "collected_at": collected,
        "collection_to_centrifugation_min": _minutes(collected, spins[0] if spins else None),
        "collection_to_freezing_min": _minutes(collected, lin[frozen]["at"] if frozen is not None else None),
        "sprec": sprec(sample_type, lin, collected, spins),
        "freeze_thaw_count": 0 if frozen is None else sum(1 for e in lin[frozen:] if e["t"] == "THAWED"),
        "temperature_excursions": _excursions(own),
        "status": _status(own),
        "assays": dict(sorted(assays.items())),
    }


def _minutes(start: int | None, end: int | None) -> float | None:
    if start is None or end is None:
        return None
    value = (end - start) / MINUTE_MS
    return value if math.isfinite(value) else None
