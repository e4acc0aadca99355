"""Deterministic biobank LIMS events of one synthetic participant, as POST /v1/biobank/events payloads.

Enrolment brings a consent grant (synthetic name, birth date and postcode). Visits happen about weekly, plus one
at the height of most flares. Each visit draws blood that goes through a realistic pre-analytical chain:
collection -> receipt -> centrifugation (mostly within 2 h at room temperature, sometimes later: SPREC A/C/E) ->
aliquoting into serum or plasma children -> freezing at -80 °C -> storage. CRP (LOINC 1988-5, mg/L) is measured
on the first aliquot: near the participant's baseline outside flares, above 5 mg/L in a flare. A small fraction
of events is deliberately bad (wrong LOINC check digit, negative quantity, future time, missing field...), marked
`valid=False`, so that tests can check that the gateway refuses exactly those.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from clinstream.core.timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from clinstream_devtools.simulate.profiles import Participant, rng_for
from clinstream_devtools.simulate.telemetry import iso_ms, seeded_uuid

FIRST_NAMES = ("Testa", "Probanda", "Simula", "Ficta", "Exempla", "Modela", "Synthia", "Imaga")
LAST_NAMES = ("Synthetica", "Fabricata", "Artificialis", "Inventa", "Placeholder", "Dummyson")
OPERATORS = (("Tech Synthetica", "technician"), ("Nurse Fabricata", "research_nurse"),
             ("Phleb Inventa", "phlebotomist"), ("Lab Placeholder", "lab_manager"))
DUO_SCOPES = (["DUO:0000042"], ["DUO:0000006"], ["DUO:0000006", "DUO:0000019"], ["DUO:0000007", "DUO:0000021"])
CRP = ("CRP", "1988-5", "mg/L")


@dataclass(frozen=True)
class SimEvent:
    """One LIMS event, when it is due to be sent, and whether it is meant to pass validation."""

    due_ms: int
    participant_id: str
    event: dict[str, Any]
    valid: bool = True


@dataclass(frozen=True)
class LimsOptions:
    """How often participants visit and how often the LIMS sends something broken."""

    visit_every_days: float = 7.0
    flare_visit_probability: float = 0.8
    bad_fraction: float = 0.02
    withdraw: bool = False  # the participant withdraws consent at the end of the window


class _Builder:
    def __init__(self, p: Participant, rng: np.random.Generator) -> None:
        self.p = p
        self.rng = rng
        self.out: list[SimEvent] = []
        self.operator = OPERATORS[int(rng.integers(len(OPERATORS)))]

    def event(self, occurred: int, payload: dict[str, Any], *, comment: str | None = None) -> None:
        recorded = occurred + int(self.rng.uniform(0.5, 30) * MINUTE_MS)
        body = {"event_id": seeded_uuid(self.rng), "participant_id": self.p.participant_id,
                "occurred_at": iso_ms(occurred), "recorded_at": iso_ms(recorded),
                "operator_name": self.operator[0], "operator_role": self.operator[1], "payload": payload}
        if comment:
            body["comment"] = comment
        self.out.append(SimEvent(recorded + int(self.rng.uniform(1, 120) * 1000), self.p.participant_id, body))

    def consent(self, at: int, action: str) -> None:
        p = self.p
        payload: dict[str, Any] = {"kind": "consent", "action": action,
                                   "status": "ACTIVE" if action == "GRANT" else "INACTIVE"}
        if action == "GRANT":
            rng = self.rng
            payload.update({
                "scope": DUO_SCOPES[int(rng.integers(len(DUO_SCOPES)))],
                "participant_name": f"{FIRST_NAMES[p.index % len(FIRST_NAMES)]} "
                                    f"{LAST_NAMES[(p.index // len(FIRST_NAMES)) % len(LAST_NAMES)]}",
                "birth_date": f"{p.birth_year:04d}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                "postcode": f"ZZ99 {int(rng.integers(1, 10))}{chr(65 + int(rng.integers(26)))}"
                            f"{chr(65 + int(rng.integers(26)))}",
            })
        self.event(at, payload)

    def visit(self, at: int, visit_no: int) -> None:
        rng = self.rng
        p = self.p
        serum = bool(rng.random() < 0.6)
        primary = f"SMP-{p.index:06d}-{visit_no:03d}"
        room = float(rng.uniform(19, 24))
        sample = {"kind": "sample", "sample_id": primary, "sample_type": "BLD"}
        self.event(at, {**sample, "event_type": "COLLECTED", "container": "SST" if serum else "PED",
                        "quantity": float(rng.choice([5.0, 7.5, 10.0])), "quantity_unit": "mL",
                        "temperature_c": round(room, 1)})
        received = at + int(rng.uniform(15, 80) * MINUTE_MS)
        self.event(received, {**sample, "event_type": "RECEIVED", "temperature_c": round(room - 0.5, 1)})
        delay_h = float(rng.choice([rng.uniform(0.4, 1.9), rng.uniform(2.1, 3.9), rng.uniform(4.2, 7.5)],
                                   p=[0.8, 0.15, 0.05]))  # SPREC pre-centrifugation A / C / E
        spun = max(received + 5 * MINUTE_MS, at + int(delay_h * HOUR_MS))
        self.event(spun, {**sample, "event_type": "CENTRIFUGED", "temperature_c": round(room, 1),
                          "centrifugation": {"g_force": float(rng.choice([1500.0, 2000.0, 2500.0])),
                                             "minutes": 10.0, "temperature_c": float(rng.choice([4.0, 20.0])),
                                             "braking": True}})
        aliquoted = spun + int(rng.uniform(10, 40) * MINUTE_MS)
        child_type = "SER" if serum else "PL1"
        children = [f"{primary}-A{k}" for k in range(1, int(rng.integers(2, 5)))]
        for child in children:
            self.event(aliquoted, {"kind": "sample", "event_type": "ALIQUOTED", "sample_id": child,
                                   "parent_sample_id": primary, "sample_type": child_type, "quantity": 0.5,
                                   "quantity_unit": "mL", "temperature_c": round(room, 1)})
        assay_at = aliquoted + int(rng.uniform(0.5, 4) * HOUR_MS)
        self.event(assay_at, {"kind": "assay", "sample_id": children[0], "analyte": CRP[0], "loinc_code": CRP[1],
                              "value": p.crp_mg_l(at, rng), "unit": CRP[2]})
        frozen = aliquoted + int(rng.uniform(10, 60) * MINUTE_MS)
        for k, child in enumerate(children[1:], start=1):
            self.event(frozen, {"kind": "sample", "event_type": "FROZEN", "sample_id": child,
                                "sample_type": child_type, "temperature_c": -80.0, "freeze_thaw_count": 0})
            self.event(frozen + int(rng.uniform(5, 30) * MINUTE_MS), {
                "kind": "sample", "event_type": "STORED", "sample_id": child, "sample_type": child_type,
                "temperature_c": -80.0, "storage_band": "M60_TO_85",
                "storage_location": f"FRZ-{1 + p.index % 4}/R{1 + visit_no % 6}/B{1 + visit_no % 20}/P{k}"})
        if rng.random() < 0.2:
            self.event(assay_at + 10 * MINUTE_MS, {"kind": "sample", "event_type": "QC", "sample_id": children[0],
                                                   "sample_type": child_type, "qc_passed": bool(rng.random() < 0.9)},
                       comment="haemolysis check" if rng.random() < 0.5 else None)


_BREAKERS = ("loinc", "quantity", "future", "sample_id", "centrifugation", "sample_type")


def _break(event: dict[str, Any], how: str) -> dict[str, Any]:
    """A broken copy of a valid event (the same event id: a LIMS bug, not a new event)."""
    bad = copy.deepcopy(event)
    payload = bad["payload"]
    if how == "loinc" or payload["kind"] == "assay":
        payload.update({"kind": "assay", "sample_id": payload.get("sample_id", "S-X"), "analyte": "CRP",
                        "loinc_code": "1988-4", "value": 3.0, "unit": "mg/L"})
        for key in list(payload):
            if key not in ("kind", "sample_id", "analyte", "loinc_code", "value", "unit"):
                del payload[key]
    elif payload["kind"] == "consent" or how == "future":
        bad["occurred_at"] = "2999-01-01T00:00:00.000Z"
    elif how == "quantity":
        payload["quantity"], payload["quantity_unit"] = -1.0, "mL"
    elif how == "sample_id":
        del payload["sample_id"]
    elif how == "centrifugation":
        payload["event_type"] = "CENTRIFUGED"
        payload.pop("centrifugation", None)
    else:
        payload["sample_type"] = "XYZ"
    return bad


def lims_events(p: Participant, start_ms: int, end_ms: int, *, seed: int,
                options: LimsOptions | None = None) -> list[SimEvent]:
    """The participant's LIMS events that occur in [start_ms, end_ms), sorted by due time. Deterministic.

    The consent grant is dated a week before `start_ms` and due at `start_ms`, so that it precedes everything.
    """
    opt = options or LimsOptions()
    rng = rng_for(seed, 6, p.index, start_ms // MINUTE_MS)
    builder = _Builder(p, rng)
    builder.consent(start_ms - 7 * DAY_MS, "GRANT")
    visits: list[int] = []
    t = start_ms + int(rng.uniform(0, opt.visit_every_days) * DAY_MS)
    while t < end_ms:
        visits.append(t)
        t += int(rng.uniform(0.7, 1.3) * opt.visit_every_days * DAY_MS)
    for flare_start, flare_end in p.flares:
        peak = (flare_start + flare_end) // 2
        if start_ms <= peak < end_ms and rng.random() < opt.flare_visit_probability:
            visits.append(peak)
    offset = p.utc_offset_minutes * MINUTE_MS
    for number, at in enumerate(sorted(visits), start=1):
        local_day_start = ((at + offset) // DAY_MS) * DAY_MS - offset
        builder.visit(local_day_start + int(rng.uniform(8, 12) * HOUR_MS), number)
    events = [e for e in builder.out if start_ms - 7 * DAY_MS <= _occurred(e) and _occurred(e) < end_ms]
    if opt.withdraw:
        before = len(builder.out)
        builder.consent(end_ms - HOUR_MS, "WITHDRAW")
        events.extend(builder.out[before:])
    out: list[SimEvent] = []
    for sim in events:
        out.append(sim)
        if sim.event["payload"]["kind"] != "consent" and rng.random() < opt.bad_fraction:
            broken = _break(sim.event, _BREAKERS[int(rng.integers(len(_BREAKERS)))])
            broken["event_id"] = seeded_uuid(rng)
            out.append(SimEvent(sim.due_ms + 1000, sim.participant_id, broken, valid=False))
    out.sort(key=lambda e: e.due_ms)
    return out


def _occurred(sim: SimEvent) -> int:
    return int(datetime.fromisoformat(sim.event["occurred_at"].replace("Z", "+00:00")).timestamp() * 1000)


def lims_payloads(events: list[SimEvent], max_events: int = 200) -> list[dict[str, Any]]:
    """Request bodies of at most `max_events` events each, in due order."""
    return [{"events": [e.event for e in events[i:i + max_events]]} for i in range(0, len(events), max_events)]
