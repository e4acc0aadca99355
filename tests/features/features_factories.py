"""Synthetic pseudonymised telemetry blocks and biobank events (made-up pseudonyms) for the features tests."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.records import InRecord, OutRecord
from clinstream.core.topics import ERASURE, PSEUDO_BIOBANK, PSEUDO_TELEMETRY

NS = "org.clinstream.telemetry."
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def pseudonym(label: str) -> str:
    """A made-up 64-hex pseudonym for a synthetic participant or device label (no real key involved)."""
    return hashlib.sha256(f"synthetic:{label}".encode()).hexdigest()


@dataclass
class Block:
    """A synthetic PseudonymisedTelemetryBlock as a dict plus its encoding."""

    record: dict[str, Any]
    value: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.value = get_codec().encode(PSEUDO_TELEMETRY.value_schema, self.record)

    @property
    def participant(self) -> str:
        return str(self.record["participant_pseudonym"])


def block(participant: str, device: str, sequence: int, start_ms: int, measurement: str, body: dict[str, Any],
          offset_min: int = 0, received_ms: int | None = None, site_id: str = "site-t",
          time_zone: str | None = None) -> Block:
    """One pseudonymised block (block_id is derived from device and sequence, as a redelivery keeps it)."""
    offsets = body.get("offsets_ms") or [ep["end_offset_ms"] for ep in body.get("episodes", [])] or [0]
    return Block({
        "block_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{device}/{sequence}")),
        "site_id": site_id,
        "participant_pseudonym": participant,
        "device_pseudonym": device,
        "key_version": 1,
        "sequence": sequence,
        "start": start_ms,
        "utc_offset_minutes": offset_min,
        "time_zone": time_zone,
        "received_at": received_ms if received_ms is not None else start_ms + max(offsets) + MIN,
        "measurement": (NS + measurement, body),
    })


def hr_body(offsets: Sequence[int], bpm: Sequence[float]) -> dict[str, Any]:
    return {"offsets_ms": list(offsets), "bpm": [float(v) for v in bpm]}


def rr_body(offsets: Sequence[int], rr: Sequence[float]) -> dict[str, Any]:
    return {"offsets_ms": list(offsets), "rr_ms": [float(v) for v in rr]}


def steps_body(offsets: Sequence[int], steps: Sequence[int], duration_s: int = 60) -> dict[str, Any]:
    return {"offsets_ms": list(offsets), "durations_s": [duration_s] * len(offsets), "steps": list(steps)}


def spo2_body(offsets: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    return {"offsets_ms": list(offsets), "spo2_percent": [float(v) for v in values]}


def skin_body(offsets: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    return {"offsets_ms": list(offsets), "celsius": [float(v) for v in values], "location": "WRIST"}


def sleep_body(episodes: Sequence[tuple[int, int, float]]) -> dict[str, Any]:
    return {"episodes": [{"start_offset_ms": s, "end_offset_ms": e, "total_sleep_time_min": tst,
                          "wake_after_sleep_onset_min": 0.0, "latency_to_sleep_onset_min": 0.0,
                          "number_of_awakenings": 0, "is_main_sleep": True} for s, e, tst in episodes]}


def in_records(blocks: Iterable[Block], site_id: str = "site-t", partition: int = 0,
               topic: str | None = None) -> list[InRecord]:
    """Blocks as consumed records of one partition (offsets in the given order)."""
    topic = topic or PSEUDO_TELEMETRY.name(site_id)
    return [InRecord(topic, partition, i, subject_key(site_id, b.participant), b.value, 0)
            for i, b in enumerate(blocks)]


@dataclass
class Generated:
    """A synthetic multi-participant data set: blocks in generation (event-time) order."""

    blocks: list[Block]
    participants: list[str]


def generate(n_participants: int = 3, hours: int = 30, seed: int = 7, offsets_min: Sequence[int] = (0, 120, -300),
             hr_block_s: int = 60, site_id: str = "site-t") -> Generated:
    """Realistic blocks: 1 Hz heart rate in 60-s blocks, RR runs, per-minute steps, SpO2, skin temperature, sleep.

    Values are on exact grids (heart rate 0.1 bpm, RR 1 ms) so an independent computation sees the same numbers.
    """
    rng = np.random.default_rng(seed)
    out: list[Block] = []
    participants = [pseudonym(f"P-{i:06d}") for i in range(n_participants)]
    start = T0 + 13 * MIN + 17_000  # not aligned to any window
    for pi, participant in enumerate(participants):
        device = pseudonym(f"DEV-{pi}")
        off = offsets_min[pi % len(offsets_min)]
        seq = 0
        for h in range(hours):
            h0 = start + h * HOUR
            worn = h % 7 != 3  # some hours without heart rate: completeness < 1
            for b in range(0, 3600, hr_block_s):
                if not worn:
                    break
                t0 = h0 + b * 1000
                n = hr_block_s
                offsets = np.arange(n) * 1000 + rng.integers(0, 300, n)
                bpm = np.round(60 + 25 * np.sin((t0 - T0) / 5e6) + rng.normal(0, 6, n), 1)
                bpm[rng.random(n) < 0.01] = 0.0  # implausible readings, dropped
                out.append(block(participant, device, seq, t0, "HeartRateSamples", hr_body(offsets, bpm), off,
                                 site_id=site_id))
                seq += 1
            for run in range(3):  # three contiguous RR runs of ~2 min per hour
                t0 = h0 + run * 20 * MIN + 5 * MIN
                rr = np.round(rng.normal(850, 60, 150)).astype(int)
                rr[rng.random(150) < 0.03] = rng.choice([250, 2400])  # artefacts outside 300-2000 ms
                offsets = np.cumsum(rr)
                out.append(block(participant, device, seq, t0, "RRIntervalSamples", rr_body(offsets, rr), off,
                                 site_id=site_id))
                seq += 1
            step_offsets = np.arange(60) * MIN + 30_000
            step_counts = rng.poisson(rng.choice([5, 40, 90], 60))
            out.append(block(participant, device, seq, h0, "StepCountSamples", steps_body(step_offsets, step_counts),
                             off, site_id=site_id))
            seq += 1
            sp_offsets = np.arange(0, 3600, 30) * 1000
            sp = np.round(np.clip(rng.normal(95, 2.5, len(sp_offsets)), 80, 100), 1)
            out.append(block(participant, device, seq, h0, "OxygenSaturationSamples", spo2_body(sp_offsets, sp), off,
                             site_id=site_id))
            seq += 1
            sk_offsets = np.arange(0, 3600, 60) * 1000
            sk = np.round(33 + rng.normal(0, 0.4, len(sk_offsets)) + 0.2 * pi, 2)
            out.append(block(participant, device, seq, h0, "SkinTemperatureSamples", skin_body(sk_offsets, sk), off,
                             site_id=site_id))
            seq += 1
            if h % 24 == 8:  # a night's sleep reported in the morning
                ep = [(0, 5 * HOUR + 40 * MIN, 330.0 + pi), (6 * HOUR + 20 * MIN, 6 * HOUR + 50 * MIN, 20.0)]
                out.append(block(participant, device, seq, h0 - 7 * HOUR, "SleepEpisodes", sleep_body(ep), off,
                                 received_ms=h0 + MIN, site_id=site_id))
                seq += 1
    out.sort(key=lambda b: b.record["received_at"])  # arrival order
    return Generated(out, participants)


# --- biobank ---------------------------------------------------------------------------------------------------
def sample_event(participant: str, sample: str, event_type: str, at_ms: int, *, sample_type: str = "SER",
                 parent: str | None = None, container: str | None = None, temperature_c: float | None = None,
                 storage_band: str | None = None, centrifugation: dict[str, Any] | None = None,
                 event_id: str | None = None, site_id: str = "site-t") -> bytes:
    payload = {"event_type": event_type, "sample_pseudonym": sample, "parent_sample_pseudonym": parent,
               "sample_type": sample_type, "container": container, "quantity": None, "quantity_unit": None,
               "temperature_c": temperature_c, "centrifugation": centrifugation, "storage_band": storage_band,
               "freeze_thaw_count": None, "qc_passed": None}
    return _event(participant, at_ms, ("org.clinstream.biobank.PseudonymisedSampleEvent", payload), event_id,
                  site_id)


def assay_event(participant: str, sample: str, loinc: str, value: float, at_ms: int, event_id: str | None = None,
                site_id: str = "site-t") -> bytes:
    payload = {"sample_pseudonym": sample, "analyte": "CRP", "loinc_code": loinc, "value": value, "unit": "mg/L"}
    return _event(participant, at_ms, ("org.clinstream.biobank.PseudonymisedAssayResult", payload), event_id, site_id)


def _event(participant: str, at_ms: int, payload: tuple[str, dict[str, Any]], event_id: str | None,
           site_id: str) -> bytes:
    return get_codec().encode(PSEUDO_BIOBANK.value_schema, {
        "event_id": event_id or str(uuid.uuid4()), "site_id": site_id, "participant_pseudonym": participant,
        "key_version": 1, "occurred_at": at_ms, "recorded_at": at_ms + 5 * MIN, "operator_role": "technician",
        "payload": payload})


def erasure(participant: str, site_id: str = "site-t") -> bytes:
    return get_codec().encode(ERASURE.value_schema, {
        "request_id": str(uuid.uuid4()), "site_id": site_id, "participant_pseudonym": participant,
        "key_version": 1, "requested_at": T0})


def records_of(values: Iterable[tuple[str, str, bytes]], site_id: str = "site-t", partition: int = 0) -> list[InRecord]:
    """(topic, participant, value) triples as consumed records."""
    return [InRecord(topic, partition, i, subject_key(site_id, participant), value, 0)
            for i, (topic, participant, value) in enumerate(values)]


# --- running the processor -------------------------------------------------------------------------------------
CLOCK = pseudonym("clock")


def clock_block(after_ms: int, site_id: str = "site-t") -> Block:
    """A heart-rate block of a separate participant far after the data: advances the watermark so all else is final."""
    t = after_ms + 5 * DAY
    return block(CLOCK, pseudonym("clock-device"), 0, t, "HeartRateSamples", hr_body([0], [60.0]), site_id=site_id)


def run(records: Sequence[InRecord], state: dict[str, Any] | None = None, batch: int = 500,
        site_id: str = "site-t", **kwargs: Any) -> tuple[list[OutRecord], dict[str, Any]]:
    """Run a fresh (or given-state) processor over the records in batches; all outputs in order."""
    from clinstream.features.processor import FeatureProcessor

    state = {} if state is None else state
    proc = FeatureProcessor(site_id, state, **kwargs)
    out: list[OutRecord] = []
    for i in range(0, len(records), batch):
        out.extend(proc.process(records[i:i + batch]).out)
    return out, state


def stored_view(blocks: Sequence[Block], site_id: str, partitions: int, version: int,
                participants: Iterable[str]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """What the store keeps of an in-process run over the blocks as the site's topic partitions them: per window
    of the given participants, the record with the greatest (revision, is_final)."""
    from clinstream.replay.kafka_io import partition_of_key

    wanted = set(participants)
    view: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for p in range(partitions):
        mine = [b for b in blocks if partition_of_key(subject_key(site_id, b.participant), partitions) == p]
        for rec, _ in decoded(run(in_records(mine, site_id=site_id, partition=p), site_id=site_id,
                                  version=version)[0]):
            key = feature_key(rec)
            if rec["participant_pseudonym"] in wanted and (
                    key not in view or (rec["revision"], rec["is_final"]) > (view[key]["revision"],
                                                                             view[key]["is_final"])):
                view[key] = rec
    return view


def feature_key(rec: dict[str, Any]) -> tuple[str, str, str, int]:
    ws = rec["window_start"]
    return rec["participant_pseudonym"], rec["feature_set"], rec["window"], int(ws.timestamp() * 1000)


def decoded(outs: Iterable[OutRecord],
            topic_suffix: str = ".feature.wearable.v1") -> list[tuple[dict[str, Any], bytes]]:
    codec = get_codec()
    return [(codec.decode(o.value), o.value) for o in outs if o.topic.endswith(topic_suffix) and o.value]


def finals(outs: Iterable[OutRecord]) -> dict[tuple[str, str, str, int], bytes]:
    """Final feature records by (pseudonym, set, window kind, start), excluding the clock participant."""
    result: dict[tuple[str, str, str, int], bytes] = {}
    for rec, value in decoded(outs):
        if rec["is_final"] and rec["participant_pseudonym"] != CLOCK:
            key = feature_key(rec)
            assert key not in result or result[key] == value, "two different final records for one window"
            result[key] = value
    return result


def latest(outs: Iterable[OutRecord]) -> dict[tuple[str, str, str, int], bytes]:
    """What an upserting store keeps: per window the record with the greatest (revision, is_final)."""
    best: dict[tuple[str, str, str, int], tuple[tuple[int, bool], bytes]] = {}
    for rec, value in decoded(outs):
        if rec["participant_pseudonym"] == CLOCK:
            continue
        key, rank = feature_key(rec), (rec["revision"], rec["is_final"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, value)
    return {k: v for k, (_, v) in best.items()}
