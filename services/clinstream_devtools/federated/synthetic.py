"""A synthetic pseudonymised cohort of one site: wearable blocks and biobank events with inflammatory flares.

This stands in for the simulators + pseudonymiser when filling a site for the federated demo and tests: it emits
the records of the PSEUDO_TELEMETRY and PSEUDO_BIOBANK topics (the real Avro contracts), which the feature
processor turns into the feature store's rows. Pseudonyms are made-up 64-hex strings (no key, no real person).

Physiology is the simulators' one model (`simulate.profiles`): each participant is `make_participant(seed, i)`
with day-to-day variability, and each day's levels follow that person's baselines, flare schedule and flare
responses; nights come from `simulate.telemetry.night`, and a blood sample's CRP from `Participant.crp_mg_l`, as
in the LIMS simulator. Only the sampling is coarser than the device simulator's (one value per day and signal).
Each cohort (seed) also draws a skin-temperature sensor bias, so sites filled with different seeds differ and local
models see different data. Everything depends on the seed only (not on the site id), so a test is reproducible.

Sparse sampling keeps the processor's work small: heart rate in one-minute bursts every hour, one RR run per
night, 4-hourly step counts, 2-hourly skin temperature, night-time SpO2 and one sleep episode per night, all
delivered in one daily sync on waking.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from clinstream.core import constants as c
from clinstream.core.avro import Codec, get_codec, subject_key
from clinstream.core.records import InRecord
from clinstream.core.timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from clinstream.core.topics import PSEUDO_BIOBANK, PSEUDO_TELEMETRY
from clinstream_devtools.simulate.profiles import (
    FLARE_ACTIVITY_DROP,
    FLARE_HR_BPM,
    FLARE_RMSSD_DROP,
    FLARE_SKIN_C,
    FLARE_SPO2_DROP,
    Participant,
    make_participant,
)
from clinstream_devtools.simulate.telemetry import Night, night

NS = "org.clinstream.telemetry."
T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z, a Monday
DAY_VARIABILITY = 1.0  # the profiles' day-to-day variability at its typical scale
FLARE_RESPONSE = 0.3  # between-person spread of the flare response (SD of the log gain)
STEPS_PER_DAY = 7000.0  # walking of a person of activity 1 outside flares
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CohortSpec:
    """What to generate for one site."""

    site_id: str
    participants: int = 30
    days: int = 40
    seed: int = 0
    start_ms: int = T0_MS
    first_visit_day: int = 10  # leaves a run-in for the 7-day window and a baseline before it
    visit_gap_days: tuple[int, int] = (3, 5)  # blood samples every 3-5 days after that


@dataclass
class Truth:
    """Ground truth of one generated blood sample (for diagnostics only; never stored)."""

    participant: str
    day: int
    crp_mg_l: float
    flare_intensity: float
    collected_ms: int


@dataclass
class SyntheticSite:
    """The records of one site: per participant a partition, in arrival order."""

    site_id: str
    participants: list[str]
    records: list[InRecord] = field(default_factory=list)
    truth: list[Truth] = field(default_factory=list)


def synthetic_pseudonym(seed: int, kind: str, label: str) -> str:
    """A made-up 64-hex pseudonym of a cohort seed (no key involved: the data is synthetic)."""
    return hashlib.sha256(f"clinstream-synthetic:{seed}:{kind}:{label}".encode()).hexdigest()


class _Generator:
    """Builds the records of one site."""

    def __init__(self, spec: CohortSpec, codec: Codec) -> None:
        self.spec = spec
        self.codec = codec
        self.rng = np.random.default_rng(spec.seed)  # the data depends on the seed only, not on the site id
        self.skin_bias = float(self.rng.normal(0, 0.4))  # the site's sensor model
        self.topic_t = PSEUDO_TELEMETRY.name(spec.site_id)
        self.topic_b = PSEUDO_BIOBANK.name(spec.site_id)

    def site(self) -> SyntheticSite:
        out = SyntheticSite(self.spec.site_id, [])
        for i in range(self.spec.participants):
            pseudonym = synthetic_pseudonym(self.spec.seed, "participant", f"P-{i:06d}")
            out.participants.append(pseudonym)
            values: list[tuple[int, str, bytes]] = []  # (arrival ms, topic, value)
            for arrival, topic, value in self._participant(i, pseudonym, out.truth):
                values.append((arrival, topic, value))
            values.sort(key=lambda v: v[0])
            key = subject_key(self.spec.site_id, pseudonym)
            out.records.extend(InRecord(topic, i, n, key, value, arrival)
                               for n, (arrival, topic, value) in enumerate(values))
        return out

    def _participant(self, i: int, pseudonym: str, truth: list[Truth]) -> Iterator[tuple[int, str, bytes]]:
        spec = self.spec
        days = spec.days
        device = synthetic_pseudonym(spec.seed, "device", f"DEV-{i:06d}")
        person = make_participant(spec.seed, i, day_variability=DAY_VARIABILITY, flare_response=FLARE_RESPONSE)
        offset_min = person.utc_offset_minutes
        first_local_day = (spec.start_ms + offset_min * MINUTE_MS) // DAY_MS
        local_days = first_local_day + np.arange(days)
        noon = local_days * DAY_MS - offset_min * MINUTE_MS + 12 * HOUR_MS
        flare = np.asarray(person.flare_level(noon), dtype=np.float64)
        rhr, rmssd, skin, spo2, steps = self._daily_levels(person, local_days, flare)
        offset_ms = offset_min * MINUTE_MS
        seq = 0
        blocks: list[tuple[int, dict[str, Any]]] = []
        for d in range(days):
            day0 = int(local_days[d]) * DAY_MS - offset_ms  # local midnight as a UTC instant
            sleep = night(person, int(local_days[d]), spec.seed)
            made = list(self._day(day0, rhr[d], rmssd[d], skin[d], steps[d], spo2[d], sleep))
            # The phone syncs once a day, on waking: the night's sleep episode first, then the day before it. The
            # sleep block moves the partition's watermark past that day, so the processor refuses the day's
            # minute and hour windows as late and only computes the (complete) day windows - much less work.
            made.sort(key=lambda m: m[0] != "SleepEpisodes")
            sync = max(start + _span_ms(body) for _, start, body in made) + 5 * MINUTE_MS
            for k, (measurement, start, body) in enumerate(made):
                received = sync + k
                blocks.append((received, {
                    "block_id": str(uuid.UUID(bytes=hashlib.sha256(f"{device}/{seq}".encode()).digest()[:16])),
                    "site_id": spec.site_id, "participant_pseudonym": pseudonym, "device_pseudonym": device,
                    "key_version": 1, "sequence": seq, "start": start, "utc_offset_minutes": offset_min,
                    "received_at": received, "measurement": (NS + measurement, body),
                }))
                seq += 1
        encoded = self.codec.encode_many(PSEUDO_TELEMETRY.value_schema, [b for _, b in blocks])
        for (received, _), value in zip(blocks, encoded, strict=True):
            yield received, self.topic_t, value
        yield from self._visits(i, person, pseudonym, offset_min, truth)

    def _daily_levels(self, person: Participant, local_days: npt.NDArray[np.int64],
                      flare: F64) -> tuple[F64, F64, F64, F64, F64]:
        """Per local day: resting HR, RMSSD, skin temperature (with the site's sensor bias), SpO2 and steps."""
        offsets = np.array([person.day_offsets(self.spec.seed, int(d)) for d in local_days]).reshape(-1, 4)
        hr_gain, rmssd_gain, skin_gain, activity_gain = person.flare_gains
        rhr = person.resting_hr + FLARE_HR_BPM * hr_gain * flare + offsets[:, 0]
        rmssd = person.rmssd_ms * (1 - FLARE_RMSSD_DROP * rmssd_gain * flare) * np.exp(offsets[:, 1])
        skin = person.skin_temp_c + self.skin_bias + FLARE_SKIN_C * skin_gain * flare + offsets[:, 2]
        spo2 = person.spo2_percent - FLARE_SPO2_DROP * flare + offsets[:, 3]
        walking = 1 - np.minimum(0.9, FLARE_ACTIVITY_DROP * activity_gain * flare)
        steps = STEPS_PER_DAY * person.activity * walking * np.exp(self.rng.normal(0, 0.3, len(flare)))
        return rhr, rmssd, skin, spo2, steps

    def _day(self, day0: int, rhr: float, rmssd: float, skin: float, steps: float, spo2: float,
             sleep: Night) -> Iterator[tuple[str, int, dict[str, Any]]]:
        rng = self.rng
        hours = np.arange(24)
        activity = np.where((hours >= 7) & (hours < 23), 18.0, 2.0) * rng.uniform(0.6, 1.0, 24)
        burst = np.arange(6) * 10_000
        hr_offsets = (hours[:, None] * HOUR_MS + 7 * MINUTE_MS + burst[None, :]).ravel()
        bpm = (rhr + activity[:, None] + rng.normal(0, 2.5, (24, 6))).ravel()
        yield "HeartRateSamples", day0, {"offsets_ms": hr_offsets.tolist(),
                                         "bpm": np.round(bpm, 1).tolist()}
        mean_rr = 60_000.0 / max(rhr - 3.0, 35.0)
        rr = np.round(mean_rr + rng.normal(0, rmssd / np.sqrt(2.0), 120)).astype(np.int64)
        rr_start = day0 + 3 * HOUR_MS
        yield "RRIntervalSamples", rr_start, {"offsets_ms": np.cumsum(rr).tolist(), "rr_ms": rr.astype(float).tolist()}
        share = np.array([0.01, 0.09, 0.30, 0.30, 0.25, 0.05])
        counts = np.maximum(0, np.round(steps * share * rng.uniform(0.8, 1.2, 6))).astype(np.int64)
        yield "StepCountSamples", day0, {"offsets_ms": (np.arange(6) * 4 * HOUR_MS).tolist(),
                                         "durations_s": [4 * 3600] * 6, "steps": counts.tolist()}
        sk_hours = np.arange(0, 24, 2)
        diurnal = np.where((sk_hours < 7) | (sk_hours >= 23), 0.6, 0.0)
        celsius = skin + diurnal + rng.normal(0, 0.1, len(sk_hours))
        yield "SkinTemperatureSamples", day0, {"offsets_ms": (sk_hours * HOUR_MS + 13 * MINUTE_MS).tolist(),
                                               "celsius": np.round(celsius, 2).tolist(), "location": "WRIST"}
        sp = np.minimum(100.0, spo2 + rng.normal(0, 0.5, 4))
        yield "OxygenSaturationSamples", day0, {"offsets_ms": ((np.arange(4) + 1) * HOUR_MS + 21 * MINUTE_MS).tolist(),
                                                "spo2_percent": np.round(sp, 1).tolist()}
        in_bed_min = (sleep.wake_ms - sleep.lights_out_ms) / MINUTE_MS
        tst = max(in_bed_min - sleep.latency_min - sleep.waso_min, 60.0)
        # the episode starts at lights out on the evening of the local day and ends the next morning
        yield "SleepEpisodes", sleep.lights_out_ms, {"episodes": [{
            "start_offset_ms": 0, "end_offset_ms": sleep.wake_ms - sleep.lights_out_ms,
            "total_sleep_time_min": round(tst, 1), "wake_after_sleep_onset_min": round(sleep.waso_min, 1),
            "latency_to_sleep_onset_min": round(sleep.latency_min, 1), "number_of_awakenings": sleep.awakenings,
            "is_main_sleep": True}]}

    def _visits(self, i: int, person: Participant, pseudonym: str, offset_min: int,
                truth: list[Truth]) -> Iterator[tuple[int, str, bytes]]:
        spec, rng = self.spec, self.rng
        lo, hi = spec.visit_gap_days
        day = spec.first_visit_day + int(rng.integers(0, hi))
        n = 0
        events: list[tuple[int, dict[str, Any]]] = []
        while day < spec.days:
            sample = synthetic_pseudonym(spec.seed, "sample", f"S-{i:06d}-{n:03d}")
            collected = spec.start_ms + day * DAY_MS - offset_min * MINUTE_MS + int(rng.integers(8, 12)) * HOUR_MS
            crp = person.crp_mg_l(collected, rng)
            truth.append(Truth(pseudonym, day, crp, float(person.flare_level(collected)), collected))
            for at, payload in _sample_lifecycle(sample, collected, crp):
                events.append((at, {
                    "event_id": str(uuid.UUID(bytes=hashlib.sha256(f"{sample}/{at}/{payload[0]}".encode())
                                              .digest()[:16])),
                    "site_id": spec.site_id, "participant_pseudonym": pseudonym, "key_version": 1,
                    "occurred_at": at, "recorded_at": at + 5 * MINUTE_MS, "operator_role": "technician",
                    "payload": payload,
                }))
            n += 1
            day += int(rng.integers(lo, hi + 1))
        encoded = self.codec.encode_many(PSEUDO_BIOBANK.value_schema, [e for _, e in events])
        for (at, _), value in zip(events, encoded, strict=True):
            yield at + 5 * MINUTE_MS, self.topic_b, value


def _span_ms(body: dict[str, Any]) -> int:
    if "episodes" in body:
        return max(int(e["end_offset_ms"]) for e in body["episodes"])
    return int(max(body["offsets_ms"]))


def _sample_lifecycle(sample: str, collected: int, crp: float) -> list[tuple[int, tuple[str, dict[str, Any]]]]:
    """COLLECTED, CENTRIFUGED, FROZEN and the CRP result of one serum sample."""
    ns = "org.clinstream.biobank."

    def event(kind: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"event_type": kind, "sample_pseudonym": sample, "parent_sample_pseudonym": None,
                                "sample_type": "SER", "container": "SST", "quantity": None, "quantity_unit": None,
                                "temperature_c": 20.0, "centrifugation": None, "storage_band": None,
                                "freeze_thaw_count": None, "qc_passed": None}
        body.update(extra)
        return ns + "PseudonymisedSampleEvent", body

    assay = (ns + "PseudonymisedAssayResult", {"sample_pseudonym": sample, "analyte": "CRP",
                                               "loinc_code": c.LOINC_CRP, "value": round(crp, 2), "unit": "mg/L"})
    return [
        (collected, event("COLLECTED")),
        (collected + HOUR_MS, event("CENTRIFUGED", centrifugation={
            "g_force": 2000.0, "minutes": 10.0, "temperature_c": 20.0, "braking": True})),
        (collected + 2 * HOUR_MS, event("FROZEN", temperature_c=-80.0, storage_band="M60_TO_85")),
        (collected + 20 * HOUR_MS, assay),
    ]


def generate_site(spec: CohortSpec, codec: Codec | None = None) -> SyntheticSite:
    """All records of one synthetic site, per participant (= partition) in arrival order."""
    return _Generator(spec, codec or get_codec()).site()
