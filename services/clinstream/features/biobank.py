"""Per-sample biobank features from a sample's events and its lineage: intervals, SPREC, freeze-thaw, status.

Events are kept in compact form (`compact_event`) and always evaluated sorted by (occurred_at, event_id), so the
result depends only on the set of events, not on arrival order or redeliveries.

Lineage: a derived sample inherits the pre-analytical history of each ancestor only up to the moment its own
line left that ancestor. The cut for the parent is the moment the sample was split off (its ALIQUOTED event,
else its first own event); the cut for the grandparent is the moment the parent was split off, and so on (never
later than a younger generation's cut). Only processing events (collection, receipt, centrifugation, freezing,
storage, moves, thawing) are inherited. A parent's thaw after the split is therefore not the child's thaw, and
freeze-thaw cycles, pre-centrifugation delay, centrifugation and storage all follow this cut.

SPREC 2.0 fluid code (fluid sample types of `sprec_table.SAMPLE_TYPES` only), element by element, each letter
looked up in the table data of `sprec_table` (Lehmann et al. 2012, Table 1):

1. sample type: the sample's type;
2. primary container: the first container code of the lineage (XXX if none, ZZZ if not in the table);
3. pre-centrifugation: delay from collection to processing (the first centrifugation, else the first freezing or
   storage) at the temperature class of every reading recorded in between (RT 18-28 degC or 2-10 degC); Z if the
   readings are mixed or in neither class, or the delay has no row; X if collection, processing or every
   reading is missing;
4. centrifugation: the first centrifugation's letter from its recorded temperature, duration, g-force and
   braking; N if never centrifuged;
5. second centrifugation: the same for the second centrifugation; N if there was none;
6. post-centrifugation: delay from the end of the last centrifugation (start + duration) to the first freezing
   or storage after it, at the temperature class of the readings in between; N if never centrifuged, X if not yet
   stored or no reading, Z as for element 3;
7. long-term storage: the current storage episode (the latest FROZEN/STORED/MOVED band not followed by a thaw)
   and the latest recorded storage container: liquid nitrogen after a (-85) to (-60) degC stage of the same
   episode is "LN after temporary (-85) to (-60) degC"; below -135 degC counts as "programmable freezing to
   < -135 degC" only if the freezing was recorded as programmable; X if band or container is unknown, Z if the
   combination has no row.
"""

from __future__ import annotations

import math
from typing import Any

from clinstream.core.timeutil import MINUTE_MS, to_ms
from clinstream.features import biobank_v1
from clinstream.features import sprec_table as tbl

Event = dict[str, Any]

ASSAY = "ASSAY"
FLUID_TYPES = frozenset(tbl.SAMPLE_TYPES) - {tbl.OTHER_TYPE}
_LINEAGE_TYPES = frozenset({"COLLECTED", "RECEIVED", "CENTRIFUGED", "FROZEN", "STORED", "MOVED", "THAWED"})
_STORAGE_START = frozenset({"FROZEN", "STORED"})
RT_C = tbl.TEMP_RANGE_C[tbl.Temp.RT]
COLD_C = tbl.TEMP_RANGE_C[tbl.Temp.COLD]
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
_LN2_BANDS = frozenset({"LN2_VAPOUR", "LN2_LIQUID"})
_STORAGE_TEMP_OF_BAND: dict[str, tbl.StorageTemp] = {
    "M18_TO_35": tbl.StorageTemp.M35_TO_M18, "M60_TO_85": tbl.StorageTemp.M85_TO_M60,
    "LN2_VAPOUR": tbl.StorageTemp.LIQUID_NITROGEN, "LN2_LIQUID": tbl.StorageTemp.LIQUID_NITROGEN,
    "RT": tbl.StorageTemp.RT, "C2_TO_10": tbl.StorageTemp.COLD,
}


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
            "sc": body.get("storage_container"), "pf": body.get("programmable_freezing"),
        })
        return body["sample_pseudonym"], base
    if name.endswith("PseudonymisedAssayResult"):
        base.update({"t": ASSAY, "loinc": body["loinc_code"], "val": float(body["value"])})
        return body["sample_pseudonym"], base
    return None


def _sorted(events: dict[str, Event]) -> list[tuple[str, Event]]:
    return sorted(events.items(), key=lambda kv: (kv[1]["at"], kv[0]))


def parent_of(events: dict[str, Event]) -> str | None:
    """The parent sample pseudonym of a sample's events (the latest event naming one), None for a primary sample."""
    named = [e for _, e in _sorted(events) if e["t"] != ASSAY and e.get("par")]
    return str(named[-1]["par"]) if named else None


def split_at(events: dict[str, Event]) -> int | None:
    """When a sample's line left its parent: its earliest ALIQUOTED event, else its earliest own sample event."""
    aliquoted: list[int] = [e["at"] for e in events.values() if e["t"] == "ALIQUOTED"]
    if aliquoted:
        return min(aliquoted)
    own: list[int] = [e["at"] for e in events.values() if e["t"] != ASSAY]
    return min(own or [e["at"] for e in events.values()], default=None)


def lineage(own: dict[str, Event], ancestors: list[dict[str, Event]]) -> list[Event]:
    """The sample's own events plus each ancestor's processing events up to its line's split, sorted.

    `ancestors` runs parent first; ancestor k is cut at the split of ancestor k-1 (the sample itself for the
    parent), and never later than the cut of a younger generation.
    """
    merged: dict[str, Event] = dict(own)
    cut: int | None = None
    line = own
    for anc in ancestors:
        split = split_at(line)
        if split is None:
            break
        cut = split if cut is None else min(cut, split)
        for eid, e in anc.items():
            if e["t"] in _LINEAGE_TYPES and e["at"] <= cut:
                merged.setdefault(eid, e)
        line = anc
    return [e for _, e in _sorted(merged)]


def _temp_class(events: list[Event], start: int, end: int) -> tbl.Temp | str:
    """The one temperature class of the readings in [start, end), else X (none) or Z (mixed or other)."""
    classes = {tbl.temp_class(e["tc"]) for e in events if e.get("tc") is not None and start <= e["at"] < end}
    if not classes:
        return tbl.UNKNOWN
    (only,) = classes if len(classes) == 1 else (None,)
    return only if only is not None else tbl.OTHER


def _delay(rows: tuple[tbl.DelayRow, ...], events: list[Event], start: int, end: int) -> str:
    if end < start:
        return tbl.UNKNOWN
    temp = _temp_class(events, start, end)
    if isinstance(temp, str):
        return temp
    return tbl.delay_code(rows, temp, (end - start) / _HOUR_MS)


def _spin(rows: tuple[tbl.SpinRow, ...], event: Event | None) -> str:
    if event is None:
        return tbl.NONE
    cf = event.get("cf")
    if not cf:
        return tbl.UNKNOWN
    g_force, minutes, celsius, braking = cf
    return tbl.spin_code(rows, celsius, minutes, g_force, braking)


def _first(events: list[Event], kinds: frozenset[str], after: int | None = None) -> Event | None:
    return next((e for e in events if e["t"] in kinds and (after is None or e["at"] >= after)), None)


def _long_term_storage(events: list[Event]) -> str:
    band: str | None = None
    episode: list[str] = []
    programmable = False
    container: str | None = None
    for e in events:
        if e.get("sc"):
            container = e["sc"]
        kind = e["t"]
        if kind == "THAWED":
            band, episode, programmable = None, [], False
        elif kind in ("FROZEN", "STORED", "MOVED") and e.get("sb"):
            band = e["sb"]
            episode.append(band)
            programmable = programmable or bool(e.get("pf"))
    if band is None or container is None:
        return tbl.UNKNOWN
    if container == tbl.StorageContainer.OTHER.value:
        return tbl.OTHER
    temp = _STORAGE_TEMP_OF_BAND.get(band)
    if band in _LN2_BANDS and "M60_TO_85" in episode[:-1]:
        temp = tbl.StorageTemp.LN_AFTER_M85_TO_M60
    elif band == "BELOW_M135" and programmable:
        temp = tbl.StorageTemp.PROGRAMMABLE_BELOW_M135
    if temp is None:
        return tbl.OTHER
    return tbl.storage_code(tbl.StorageContainer(container), temp)


def sprec(sample_type: str, events: list[Event], collected: int | None) -> str | None:
    """The derived SPREC 2.0 code of a fluid sample from its sorted lineage (None for non-fluid types)."""
    if sample_type not in FLUID_TYPES:
        return None
    containers = [e["ct"] for e in events if e.get("ct")]
    container = (tbl.UNKNOWN_TYPE if not containers else containers[0] if containers[0] in tbl.PRIMARY_CONTAINERS
                 else tbl.OTHER_TYPE)
    spins = [e for e in events if e["t"] == "CENTRIFUGED"]
    processed = spins[0] if spins else _first(events, _STORAGE_START)
    if collected is None or processed is None:
        pre = tbl.UNKNOWN
    else:
        pre = _delay(tbl.PRE_CENTRIFUGATION, events, collected, processed["at"])
    first = _spin(tbl.CENTRIFUGATION, spins[0] if spins else None)
    second = _spin(tbl.SECOND_CENTRIFUGATION, spins[1] if len(spins) > 1 else None)
    if not spins:
        post = tbl.NONE
    else:
        last = spins[-1]
        spun_end = last["at"] + round((last["cf"][1] if last.get("cf") else 0.0) * MINUTE_MS)
        stored = _first(events, _STORAGE_START, after=last["at"])
        post = tbl.UNKNOWN if stored is None else _delay(tbl.POST_CENTRIFUGATION, events, spun_end, stored["at"])
    storage = _long_term_storage(events)
    return f"{sample_type}-{container}-{pre}-{first}-{second}-{post}-{storage}"


def _in(value: float, band: tuple[float, float]) -> bool:
    return band[0] <= value <= band[1]


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


LINEAGE_VERSION = 2  # the first feature version with per-ancestor cuts and the SPREC 2.0 table


def sample_features(own_events: dict[str, Event], ancestors: list[dict[str, Event]],
                    version: int = LINEAGE_VERSION) -> dict[str, Any]:
    """The SampleFeatureRecord columns derived from a sample's events and its ancestors' (parent first).

    Feature version 1 keeps its lineage and SPREC (`biobank_v1`), so that its rows stay reproducible.
    """
    v2 = version >= LINEAGE_VERSION
    own = [e for _, e in _sorted(own_events)]
    lin = lineage(own_events, ancestors) if v2 else biobank_v1.lineage(own_events, ancestors)
    sample_events = [e for e in own if e["t"] != ASSAY]
    sample_type = sample_events[-1]["st"] if sample_events else "ZZZ"
    collected = next((e["at"] for e in lin if e["t"] == "COLLECTED"), None)
    spins = [e["at"] for e in lin if e["t"] == "CENTRIFUGED"]
    frozen = next((i for i, e in enumerate(lin) if e["t"] == "FROZEN"), None)
    assays: dict[str, float] = {}
    for e in own:
        if e["t"] == ASSAY:
            assays[e["loinc"]] = e["val"]
    return {
        "parent_sample_pseudonym": parent_of(own_events),
        "sample_type": sample_type,
        "collected_at": collected,
        "collection_to_centrifugation_min": _minutes(collected, spins[0] if spins else None),
        "collection_to_freezing_min": _minutes(collected, lin[frozen]["at"] if frozen is not None else None),
        "sprec": sprec(sample_type, lin, collected) if v2 else biobank_v1.sprec(sample_type, lin, collected),
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
