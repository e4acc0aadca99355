"""The pure simulators: determinism, plausible values the gateway accepts, and a flare signal in both sources."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime

import numpy as np
import orjson
import pytest

from clinstream.core.constants import CRP_FLARE_MG_L
from clinstream.ingest.biobank_validate import AcceptedEvent, BiobankValidator
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.telemetry_validate import AcceptedBlock, TelemetryValidator
from clinstream_devtools.simulate.lims import LimsOptions, lims_events
from clinstream_devtools.simulate.profiles import Participant, make_cohort, make_participant
from clinstream_devtools.simulate.telemetry import SimBlock, batch_payloads, device_blocks, rmssd

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEED = 11


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def flaring() -> list[tuple[Participant, list[SimBlock]]]:
    """Two participants with flare and flare-free time in an 8-day window, and their blocks."""
    chosen = []
    for p in make_cohort(SEED, 40):
        levels = p.flare_level(np.arange(T0, T0 + 8 * DAY, 3_600_000))
        if (levels > 0.9).mean() > 0.25 and (levels == 0).mean() > 0.25:
            chosen.append(p)
        if len(chosen) == 2:
            break
    assert len(chosen) == 2
    return [(p, device_blocks(p, T0, T0 + 8 * DAY, seed=SEED)) for p in chosen]


def test_same_seed_same_data_other_seed_other_data() -> None:
    p = make_participant(SEED, 3)
    assert p == make_participant(SEED, 3) and p != make_participant(SEED + 1, 3)
    a = device_blocks(p, T0, T0 + 6 * 3_600_000, seed=SEED)
    b = device_blocks(p, T0, T0 + 6 * 3_600_000, seed=SEED)
    assert orjson.dumps([(x.due_ms, x.block) for x in a]) == orjson.dumps([(x.due_ms, x.block) for x in b])
    c = device_blocks(p, T0, T0 + 6 * 3_600_000, seed=SEED + 1)
    assert orjson.dumps([x.block for x in a]) != orjson.dumps([x.block for x in c])
    e1 = lims_events(p, T0, T0 + 20 * DAY, seed=SEED)
    assert orjson.dumps([e.event for e in e1]) == orjson.dumps([e.event for e in lims_events(p, T0, T0 + 20 * DAY,
                                                                                              seed=SEED)])


def test_every_simulated_block_passes_the_gateway(flaring: list[tuple[Participant, list[SimBlock]]]) -> None:
    validator = TelemetryValidator(IngestSettings(), "s")
    for p, blocks in flaring:
        results = [validator.validate(i, b.block, device_id=p.device_id, received_ms=T0 + 9 * DAY)
                   for i, b in enumerate(blocks)]
        rejected = [r for r in results if not isinstance(r, AcceptedBlock)]
        assert rejected == []
        kinds = Counter(b.block["schema"] for b in blocks)
        assert set(kinds) == {"heart-rate", "rr-interval", "step-count", "oxygen-saturation", "body-temperature",
                              "sleep-episode"}
        assert 6 <= kinds["sleep-episode"] <= 8  # about one main sleep per night


def test_delivery_is_realistic(flaring: list[tuple[Participant, list[SimBlock]]]) -> None:
    p, blocks = flaring[0]
    sequences = [b.block["sequence"] for b in blocks]
    unique = sorted(set(sequences))
    assert unique == list(range(len(unique)))  # one counter per device, over all schemas
    assert len(sequences) > len(unique)  # some blocks are sent twice (same block_id)
    assert sum(1 for x, y in itertools.pairwise(sequences) if y < x - 20) > 10  # late, out of order
    assert all(b.due_ms > _ms(b.block["start"]) for b in blocks)
    hr_times = sorted(_ms(b.block["start"]) for b in blocks if b.block["schema"] == "heart-rate")
    gaps = np.diff(hr_times)
    assert (gaps > 15 * 60_000).sum() >= 4  # wear gaps (charging, shower) leave holes
    for _, body in batch_payloads(blocks, 50):
        ids = [b["block_id"] for b in body["blocks"]]
        assert len(ids) == len(set(ids)) and len(ids) <= 50
    more = device_blocks(p, T0 + 8 * DAY, T0 + 9 * DAY, seed=SEED, first_sequence=unique[-1] + 1)
    assert min(b.block["sequence"] for b in more) == unique[-1] + 1


def test_rr_intervals_follow_heart_rate_and_carry_variability(flaring) -> None:
    _p, blocks = flaring[0]
    hr = {}
    for b in blocks:
        if b.block["schema"] == "heart-rate":
            start = _ms(b.block["start"])
            for off, v in zip(b.block["offsets_ms"], b.block["values"], strict=True):
                hr[(start + off) // 60_000] = v
    errors, variability = [], []
    for b in blocks:
        if b.block["schema"] != "rr-interval":
            continue
        rr = np.asarray(b.block["values"])
        minute = _ms(b.block["start"]) // 60_000
        around = [hr[m] for m in range(minute, minute + 5) if m in hr]
        if around:
            errors.append(abs(60_000 / rr.mean() - np.mean(around)))
        clean = rr[(rr >= 300) & (rr <= 2000)]
        variability.append(rmssd(clean))
    assert np.median(errors) < 4.0  # RR ~ 60000 / HR
    assert 10 < np.median(variability) < 120 and np.std(variability) > 3  # real, varying HRV


def test_flare_raises_heart_rate_and_skin_temperature_and_lowers_hrv(flaring) -> None:
    for p, blocks in flaring:
        series: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("hr", "skin", "rmssd")}
        for b in blocks:
            kind = b.block["schema"]
            start = _ms(b.block["start"])
            level = float(p.flare_level(start))
            if 0 < level < 0.9:
                continue
            bucket = 0 if level == 0 else 1
            if kind == "heart-rate":
                series["hr"][bucket].append(float(np.percentile(b.block["values"], 10)))
            elif kind == "body-temperature":
                series["skin"][bucket].extend(b.block["values"])
            elif kind == "rr-interval":
                rr = np.asarray(b.block["values"])
                series["rmssd"][bucket].append(rmssd(rr[(rr >= 300) & (rr <= 2000)]))
        calm, flare = ({k: float(np.median(v[i])) for k, v in series.items()} for i in (0, 1))
        assert flare["hr"] - calm["hr"] > 5, (calm, flare)
        assert flare["skin"] - calm["skin"] > 0.3, (calm, flare)
        assert flare["rmssd"] < 0.75 * calm["rmssd"], (calm, flare)


def test_lims_events_are_valid_except_the_broken_ones_and_crp_marks_flares() -> None:
    validator = BiobankValidator(IngestSettings(), "s")
    crp_calm, crp_flare = [], []
    kinds: Counter[str] = Counter()
    for p in make_cohort(SEED, 12):
        events = lims_events(p, T0, T0 + 30 * DAY, seed=SEED, options=LimsOptions(bad_fraction=0.05))
        assert events[0].event["payload"] == {**events[0].event["payload"], "kind": "consent", "action": "GRANT"}
        for i, sim in enumerate(events):
            result = validator.validate(i, sim.event, received_ms=T0 + 31 * DAY)
            assert isinstance(result, AcceptedEvent) == sim.valid, (sim.event, result)
            payload = sim.event["payload"]
            kinds[payload.get("event_type", payload["kind"])] += sim.valid
            if sim.valid and payload["kind"] == "assay":
                sample_visit = _ms(sim.event["occurred_at"]) - 6 * 3_600_000
                level = float(p.flare_level(sample_visit))
                if level >= 0.9:
                    crp_flare.append(payload["value"])
                elif level == 0:
                    crp_calm.append(payload["value"])
    assert {"consent", "COLLECTED", "RECEIVED", "CENTRIFUGED", "ALIQUOTED", "FROZEN", "STORED", "assay"} <= set(kinds)
    assert min(crp_flare) > CRP_FLARE_MG_L and np.median(crp_calm) < 3.0
    assert np.mean(np.asarray(crp_calm) > CRP_FLARE_MG_L) < 0.05


def test_pre_analytical_chain_is_ordered_and_plausible() -> None:
    p = make_participant(SEED, 5)
    events = [e.event for e in lims_events(p, T0, T0 + 15 * DAY, seed=SEED, options=LimsOptions(bad_fraction=0))]
    by_sample: dict[str, dict[str, int]] = {}
    for e in events:
        payload = e["payload"]
        if payload["kind"] == "sample":
            by_sample.setdefault(payload["sample_id"], {})[payload["event_type"]] = _ms(e["occurred_at"])
            if payload["event_type"] == "FROZEN":
                assert payload["temperature_c"] == -80.0
    primaries = {s: t for s, t in by_sample.items() if "COLLECTED" in t}
    assert primaries
    for times in primaries.values():
        assert times["COLLECTED"] < times["RECEIVED"] < times["CENTRIFUGED"]
        assert 0.25 < (times["CENTRIFUGED"] - times["COLLECTED"]) / 3_600_000 < 8  # SPREC A..E delays
    withdrawn = lims_events(p, T0, T0 + 15 * DAY, seed=SEED, options=LimsOptions(withdraw=True))
    assert [e.event["payload"]["action"] for e in withdrawn if e.event["payload"]["kind"] == "consent"] == [
        "GRANT", "WITHDRAW"]
