"""The sparse device profile, day-to-day and between-person variability, the device runner's steps and pacing."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter, defaultdict
from datetime import datetime

import httpx
import numpy as np
import orjson
import pytest

from clinstream.ingest.config import IngestSettings
from clinstream.ingest.telemetry_validate import AcceptedBlock, TelemetryValidator
from clinstream_devtools.simulate.client import GatewayClient, run_devices
from clinstream_devtools.simulate.profiles import make_cohort, make_participant
from clinstream_devtools.simulate.telemetry import DeviceOptions, device_blocks

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEED = 11


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_sparse_profile_sends_about_a_thousand_valid_readings_a_day_in_daily_blocks() -> None:
    validator = TelemetryValidator(IngestSettings(), "s")
    readings: Counter[str] = Counter()
    blocks_per_day: defaultdict[tuple[str, str, int], set[str]] = defaultdict(set)
    people = make_cohort(SEED, 4, day_variability=1.0)
    for p in people:
        blocks = device_blocks(p, T0, T0 + 6 * DAY, seed=SEED, options=DeviceOptions.sparse())
        for i, b in enumerate(blocks):
            assert isinstance(validator.validate(i, b.block, device_id=p.device_id, received_ms=T0 + 7 * DAY),
                              AcceptedBlock)
            readings[b.block["schema"]] += b.readings
            if b.block["schema"] not in ("rr-interval", "sleep-episode"):
                blocks_per_day[(p.device_id, b.block["schema"], _ms(b.block["start"]) // DAY)].add(b.block["block_id"])
    per_day = {k: v / (len(people) * 6) for k, v in readings.items()}
    assert set(per_day) == {"heart-rate", "rr-interval", "step-count", "oxygen-saturation", "body-temperature",
                            "sleep-episode"}
    assert 600 < sum(per_day.values()) < 1600
    assert 100 < per_day["heart-rate"] <= 144 and 60 < per_day["step-count"] <= 96
    assert 400 < per_day["rr-interval"] < 1200  # four 3-min recordings a day, when worn throughout
    assert {len(ids) for ids in blocks_per_day.values()} == {1}  # one block per stream and UTC day (resends aside)


def test_sparse_daily_means_still_show_flares() -> None:
    """The 10-s model and sparse sampling keep the flare signal of the dense profile."""
    hr: dict[bool, list[float]] = defaultdict(list)
    skin: dict[bool, list[float]] = defaultdict(list)
    for p in make_cohort(SEED, 12):
        for b in device_blocks(p, T0, T0 + 20 * DAY, seed=SEED, options=DeviceOptions.sparse(late_fraction=0.0)):
            start = _ms(b.block["start"])
            flaring = bool(p.flare_level(start + 12 * 3_600_000) > 0.9)
            if not flaring and p.flare_level(start + 12 * 3_600_000) > 0:
                continue
            if b.block["schema"] == "heart-rate":
                hr[flaring].append(float(np.mean(b.block["values"])) - p.resting_hr)
            elif b.block["schema"] == "body-temperature":
                skin[flaring].append(float(np.mean(b.block["values"])) - p.skin_temp_c)
    assert hr[True] and hr[False] and skin[True] and skin[False]
    assert np.mean(hr[True]) - np.mean(hr[False]) > 5.0  # +9 bpm at full flare
    assert np.mean(skin[True]) - np.mean(skin[False]) > 0.3  # +0.6 degC at full flare


def test_day_variability_is_off_by_default_and_moves_daily_means_when_on() -> None:
    calm = make_participant(SEED, 5)
    assert calm.day_variability == 0.0 and calm.day_offsets(SEED, 20_000) == (0.0, 0.0, 0.0, 0.0)
    varied = make_participant(SEED, 5, day_variability=1.0)
    assert varied.resting_hr == calm.resting_hr and varied.flares == calm.flares  # other draws unchanged
    options = DeviceOptions.sparse(late_fraction=0.0, duplicate_fraction=0.0)

    def daily_skin(p: object) -> list[float]:
        out = []
        for b in device_blocks(p, T0, T0 + 14 * DAY, seed=SEED, options=options):  # type: ignore[arg-type]
            if b.block["schema"] == "body-temperature":
                out.append(float(np.mean(b.block["values"])))
        return out

    assert np.std(np.diff(daily_skin(varied))) > np.std(np.diff(daily_skin(calm))) + 0.1


def test_flare_response_spread_is_off_by_default_and_personal_when_on() -> None:
    assert all(p.flare_gains == (1.0, 1.0, 1.0, 1.0) for p in make_cohort(SEED, 5))
    spread = make_cohort(SEED, 200, flare_response=0.5)
    plain = make_cohort(SEED, 200)
    assert [p.resting_hr for p in spread] == [p.resting_hr for p in plain]  # other draws unchanged
    gains = np.array([p.flare_gains for p in spread])
    assert 0.8 < gains.mean() < 1.2 and gains.std() > 0.25 and gains.min() >= 0.1
    assert gains[:, 1].max() <= 1.8  # HRV never falls to nothing in a flare


def test_device_options_refuse_periods_the_model_cannot_produce() -> None:
    for bad in ({"steps_period_s": 90}, {"steps_period_s": 7 * 60}, {"spo2_awake_period_s": 900},
                {"model_step_s": 7}, {"hr_period_s": 15, "model_step_s": 10}, {"rr_minutes": 400}):
        with pytest.raises(ValueError):
            DeviceOptions.sparse(**bad)
    assert DeviceOptions().model_step_s == 1 and DeviceOptions().hr_period_s == 5  # the dense default


def _capture() -> tuple[list[dict[str, object]], httpx.MockTransport]:
    sent: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(gzip.decompress(request.content))
        sent.extend(body["blocks"])
        return httpx.Response(202, json={"accepted": [b["block_id"] for b in body["blocks"]], "rejected": [],
                                         "readings_accepted": 0})

    return sent, httpx.MockTransport(handler)


def test_generation_steps_send_the_same_blocks_one_day_at_a_time_with_pacing() -> None:
    people = make_cohort(SEED, 3)
    tokens = {p.device_id: "t" for p in people}
    options = DeviceOptions.sparse(late_fraction=0.0, duplicate_fraction=0.0)
    runs: dict[int, tuple[list[dict[str, object]], list[int]]] = {}
    for step_days in (1, 4):
        sent, transport = _capture()
        paced: list[int] = []

        async def pace(sim_ms: int, paced: list[int] = paced, sent: list[dict[str, object]] = sent) -> None:
            assert all(_ms(str(b["start"])) < sim_ms for b in sent)  # nothing of a later day went ahead
            paced.append(sim_ms)

        async def main(transport: httpx.MockTransport = transport, step_days: int = step_days,
                       pace: object = pace) -> None:
            client = GatewayClient("http://gateway.invalid", transport=transport)
            try:
                await run_devices(client, people, tokens, T0, T0 + 6 * DAY, seed=SEED, options=options,
                                  step_days=step_days, pace=pace)  # type: ignore[arg-type]
            finally:
                await client.close()

        asyncio.run(main())
        runs[step_days] = (sent, paced)
    (one, paced_one), (four, paced_four) = runs[1], runs[4]
    assert paced_one == paced_four == [T0 + d * DAY for d in range(1, 7)]
    # block ids are drawn per generation window; the measurements, sequence numbers and times are the same
    assert len(one) == len(four) > 0
    def content(blocks: list[dict[str, object]]) -> list[bytes]:
        return sorted(orjson.dumps({**b, "block_id": ""}) for b in blocks)

    assert content(one) == content(four)
