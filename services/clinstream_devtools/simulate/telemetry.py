"""Deterministic wearable telemetry of one synthetic participant, as POST /v1/telemetry block payloads.

The day is modelled at one-second resolution (vectorised with numpy), then cut into blocks:

* heart rate: resting level, lower at night, circadian swing, a lagged rise with walking, a flare offset, noise;
* RR intervals: short recordings every half hour; mean 60000/HR plus respiratory sinus arrhythmia and AR(1)
  noise scaled to a target RMSSD that is higher at night, lower when walking and lower in a flare;
* steps per minute: walking bouts (fewer in a flare) over a light background;
* SpO2: dense at night with occasional desaturation dips, sparse by day;
* wrist skin temperature: warmer asleep and in a flare;
* one sleep episode per night (more wake after sleep onset in a flare);
* optionally short tri-axial acceleration windows;
* wear gaps (charging, shower, nights off-wrist) carry no data; some blocks are delivered late (out of order)
  and a few are sent twice (same block_id).

Every value stays inside the gateway's default plausible ranges. `device_blocks` returns blocks with the time
they are due to be sent; `batch_payloads` groups them into request bodies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from clinstream.core.timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from clinstream_devtools.simulate.profiles import (
    FLARE_ACTIVITY_DROP,
    FLARE_HR_BPM,
    FLARE_RMSSD_DROP,
    FLARE_SKIN_C,
    FLARE_SLEEP_H,
    FLARE_SPO2_DROP,
    Participant,
    rng_for,
)

SECONDS_PER_DAY = 86_400
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class DeviceOptions:
    """What a simulated device measures and how it delivers.

    The defaults model a dense research wearable (about 20,000 readings per participant-day); `sparse()` is a
    low-rate profile (about 1,500) for long cohorts, e.g. filling feature stores for the federated task.
    """

    block_minutes: int = 15
    hr_period_s: int = 5
    rr_every_min: int = 30  # one RR recording starts every this many minutes (UTC-aligned)...
    rr_minutes: int = 5  # ...and lasts this long (only if the device is worn throughout)
    steps_period_s: int = 60  # step counts over this many seconds (a multiple of 60)
    skin_period_s: int = 60  # wrist skin temperature every this many seconds
    spo2_period_s: int = 60  # SpO2 every this many seconds while asleep...
    spo2_awake_period_s: int = 600  # ...and every this many seconds awake (a multiple of spo2_period_s)
    model_step_s: int = 1  # time step of the physiological model; the periods above must be multiples of it
    acceleration: bool = False
    late_fraction: float = 0.05
    duplicate_fraction: float = 0.01

    def __post_init__(self) -> None:
        periods = (self.block_minutes, self.hr_period_s, self.rr_every_min, self.rr_minutes, self.steps_period_s,
                   self.skin_period_s, self.spo2_period_s, self.spo2_awake_period_s)
        if min(periods) < 1:
            raise ValueError("every period must be at least 1")
        if self.steps_period_s % 60 or SECONDS_PER_DAY % self.steps_period_s:
            raise ValueError("steps_period_s must be a multiple of 60 that divides a day")
        if self.spo2_awake_period_s % self.spo2_period_s:
            raise ValueError("spo2_awake_period_s must be a multiple of spo2_period_s")
        step = self.model_step_s
        if 60 % step or any(x % step for x in (self.hr_period_s, self.rr_minutes * 60, self.skin_period_s,
                                               self.spo2_period_s)):
            raise ValueError("model_step_s must divide 60 and every sampling period")
        if self.rr_minutes > self.rr_every_min or self.rr_minutes * 60 >= SECONDS_PER_DAY:
            raise ValueError("an RR recording must be shorter than the gap between recordings")

    @classmethod
    def sparse(cls, **overrides: Any) -> DeviceOptions:
        """A low-rate wearable that syncs once a day (one block per stream and UTC day, about 1,100 readings a
        day): HR every 10 min; a 3-min RR recording every 6 h, night included; step counts per 15 min; skin
        temperature every 30 min; SpO2 every 10 min asleep and hourly awake; the day modelled in 10-s steps."""
        values: dict[str, Any] = {"block_minutes": 1440, "hr_period_s": 600, "rr_every_min": 360, "rr_minutes": 3,
                                  "steps_period_s": 900, "skin_period_s": 1800, "spo2_period_s": 600,
                                  "spo2_awake_period_s": 3600, "model_step_s": 10}
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class SimBlock:
    """One block as the device sends it, and when (epoch ms) it is due to be sent."""

    due_ms: int
    device_id: str
    participant_id: str
    block: dict[str, Any]
    readings: int


def seeded_uuid(rng: np.random.Generator) -> str:
    """A random-looking (version 4) UUID drawn from a seeded generator."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-01-01T08:00:00.000Z."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rmssd(rr: FloatArray) -> float:
    """Root mean square of successive differences (Task Force 1996)."""
    return float(np.sqrt(np.mean(np.diff(rr) ** 2)))


@dataclass(frozen=True)
class Night:
    """One night of a participant: lights out, final awakening and sleep quality."""

    lights_out_ms: int
    wake_ms: int
    latency_min: float
    waso_min: float
    awakenings: int
    worn: bool


def night(p: Participant, local_day: int, seed: int) -> Night:
    """The night that starts on the evening of local day number `local_day` (days since 1970, local time)."""
    rng = rng_for(seed, 3, p.index, local_day)
    local_midnight_utc = local_day * DAY_MS - p.utc_offset_minutes * MINUTE_MS
    lights_out = local_midnight_utc + int((p.sleep_start_h + rng.normal(0, 0.4)) * HOUR_MS)
    flare = float(p.flare_level(lights_out))
    flare *= p.flare_gains[3]
    hours = p.sleep_hours + rng.normal(0, 0.6) - FLARE_SLEEP_H * flare
    wake = lights_out + int(float(np.clip(hours, 4.5, 10.5)) * HOUR_MS)
    return Night(lights_out, wake, float(rng.uniform(5, 30) + 10 * flare), float(rng.uniform(10, 45) + 25 * flare),
                 int(rng.integers(1, 5) + round(2 * flare)), bool(rng.random() > 0.04))


def _fast_length(n: int) -> int:
    """The smallest 5-smooth integer >= n (an FFT size pocketfft handles fast)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _smooth(x: FloatArray, tau_s: float) -> FloatArray:
    """First-order lag (causal exponential kernel), same length; FFT convolution."""
    kernel = np.exp(-np.arange(int(5 * tau_s)) / tau_s)
    kernel /= kernel.sum()
    n = _fast_length(x.size + kernel.size)
    return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(kernel, n), n)[: x.size]


def _intervals_mask(t: FloatArray, intervals: Iterable[tuple[float, float]]) -> BoolArray:
    mask = np.zeros(t.size, dtype=bool)
    for lo, hi in intervals:
        mask |= (t >= lo) & (t < hi)
    return mask


@dataclass
class _Day:
    start_ms: int
    step_s: int  # the model's time step: element i of every array is the instant start_ms + i * step_s seconds
    t: FloatArray  # epoch ms of every step
    worn: BoolArray
    asleep: BoolArray
    cadence: FloatArray  # steps/min while walking, else 0
    flare: FloatArray
    hr: FloatArray
    nights: list[Night]
    offsets: FloatArray | None = None  # day-to-day offsets (Participant.day_offsets) of each step's local day


def _day_offset(day: _Day, which: int, steps: Any) -> Any:
    """One of the participant's day-to-day offsets at the given model steps (0 without day variability)."""
    return 0.0 if day.offsets is None else day.offsets[steps, which]


def _noise_sd(sd_1s: float, tau_s: float, step_s: int) -> float:
    """The SD of white noise at `step_s` whose `_smooth`ing over tau_s has the SD it has at 1-s steps."""
    if step_s == 1:
        return sd_1s

    def energy(tau: float) -> float:
        kernel = np.exp(-np.arange(int(5 * tau)) / tau)
        return float(np.sum((kernel / kernel.sum()) ** 2))

    return sd_1s * float(np.sqrt(energy(tau_s) / energy(tau_s / step_s)))


def _day(p: Participant, day_start: int, seed: int, step_s: int = 1) -> _Day:
    rng = rng_for(seed, 2, p.index, day_start // DAY_MS)
    t = day_start + np.arange(SECONDS_PER_DAY // step_s, dtype=np.float64) * (1000.0 * step_s)
    offset_ms = p.utc_offset_minutes * MINUTE_MS
    local_hour = ((t + offset_ms) % DAY_MS) / HOUR_MS
    first_local_day = (day_start + offset_ms) // DAY_MS
    nights = [night(p, d, seed) for d in range(first_local_day - 1, first_local_day + 2)]
    asleep = _intervals_mask(t, [(n.lights_out_ms, n.wake_ms) for n in nights])
    off_wrist = _intervals_mask(t, [(n.lights_out_ms, n.wake_ms) for n in nights if not n.worn])
    gaps: list[tuple[float, float]] = []
    local_midnight = first_local_day * DAY_MS - offset_ms
    if rng.random() < 0.8:  # charging in the evening
        s = local_midnight + rng.uniform(18, 21) * HOUR_MS
        gaps.append((s, s + rng.uniform(45, 100) * MINUTE_MS))
    if rng.random() < 0.6:  # shower in the morning
        s = local_midnight + rng.uniform(7, 9) * HOUR_MS
        gaps.append((s, s + rng.uniform(10, 30) * MINUTE_MS))
    worn = ~(off_wrist | _intervals_mask(t, gaps))
    flare = np.asarray(p.flare_level(t), dtype=np.float64)
    awake_day = (~asleep) & (local_hour >= 7) & (local_hour < 22.5)
    cadence = np.zeros(t.size)
    n_bouts = rng.poisson(9 * p.activity * (1 - min(0.9, FLARE_ACTIVITY_DROP * p.flare_gains[3] * float(flare.mean()))))
    candidates = np.flatnonzero(awake_day)
    if candidates.size and n_bouts:
        for start in rng.choice(candidates, size=n_bouts):
            length = int(rng.uniform(3, 40) * 60)
            cadence[start:start + length // step_s] = rng.uniform(90, 125)
    cadence[asleep] = 0.0
    circadian = 3.0 * np.cos(2 * np.pi * (local_hour - 17) / 24)
    sleep_drop = _smooth(asleep.astype(np.float64), 600 / step_s) * -7.0
    activity_rise = _smooth(cadence * 0.28, 45 / step_s)
    noise = _smooth(rng.normal(0, _noise_sd(9.0, 20, step_s), t.size), 20 / step_s)
    hr = p.resting_hr + 3.0 + circadian + sleep_drop + activity_rise + FLARE_HR_BPM * p.flare_gains[0] * flare + noise
    offsets = None
    if p.day_variability > 0:
        local_days = ((t + offset_ms) // DAY_MS).astype(np.int64)
        table = np.array([p.day_offsets(seed, d) for d in range(first_local_day - 1, first_local_day + 2)])
        offsets = table[local_days - (first_local_day - 1)]
        hr = hr + offsets[:, 0]
    return _Day(day_start, step_s, t, worn, asleep, cadence, flare, np.clip(hr, 38, 190), nights, offsets)


def _regular_blocks(kind: str, unit: str, times: FloatArray, values: dict[str, Any], block_ms: int,
                    extra: dict[str, Any] | None = None) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    """Cut time-ordered samples into aligned blocks: (block start, data end, body, readings)."""
    if times.size == 0:
        return
    window = (times // block_ms).astype(np.int64)
    cuts = np.flatnonzero(np.diff(window)) + 1
    for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [times.size])), strict=True):
        start = int(window[lo]) * block_ms
        offsets = (times[lo:hi] - start).astype(np.int64)
        body: dict[str, Any] = {"schema": kind, "unit": unit}
        if extra:
            body.update(extra)
        body["offsets_ms"] = offsets.tolist()
        for name, arr in values.items():
            body[name] = arr[lo:hi].tolist()
        end = int(times[hi - 1]) + (int(values["durations_s"][hi - 1]) * 1000 if "durations_s" in values else 1000)
        yield start, end, body, hi - lo


def _heart_rate(day: _Day, opt: DeviceOptions) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    every = opt.hr_period_s // day.step_s
    idx = np.flatnonzero(day.worn[::every]) * every
    yield from _regular_blocks("heart-rate", "beats/min", day.t[idx], {"values": np.round(day.hr[idx])},
                               opt.block_minutes * MINUTE_MS)


def _rr_recordings(p: Participant, day: _Day, opt: DeviceOptions,
                   rng: np.random.Generator) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    length_s = opt.rr_minutes * 60
    for start_s in range(0, SECONDS_PER_DAY - length_s, opt.rr_every_min * 60):
        i0, i1 = start_s // day.step_s, (start_s + length_s) // day.step_s  # the recording's model steps
        if not day.worn[i0:i1].all():
            continue
        hr_window = day.hr[i0:i1]
        mean_rr = 60_000.0 / float(hr_window.mean())
        n = int(length_s * 1000 / mean_rr)
        approx = np.minimum((np.arange(n) * mean_rr / 1000).astype(np.int64) // day.step_s, i1 - i0 - 1)
        base = 60_000.0 / hr_window[approx]
        beat_t = np.cumsum(base) / 1000.0
        rsa = np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * beat_t + rng.uniform(0, 2 * np.pi))
        ar = np.zeros(n)
        shocks = rng.normal(0, 1, n)
        for k in range(1, n):
            ar[k] = 0.6 * ar[k - 1] + shocks[k]
        wiggle = rsa + 0.7 * ar
        flare = float(day.flare[i0])
        walking = float(np.mean(day.cadence[i0:i1] > 0))
        target = (p.rmssd_ms * (1 - FLARE_RMSSD_DROP * p.flare_gains[1] * flare) * (1.25 if day.asleep[i0] else 1.0)
                  * (1 - 0.5 * walking))
        if day.offsets is not None:
            target *= float(np.exp(day.offsets[i0, 1]))
        wiggle *= target / max(rmssd(wiggle), 1e-9)
        rr = np.clip(np.round(base + wiggle), 300, 2000)
        rr[rng.random(n) < 0.0005] = 250.0  # a rare spurious beat detection: an artefact HRV filters drop (< 300 ms)
        offsets = np.cumsum(rr).astype(np.int64)
        keep = offsets < length_s * 1000
        start = int(day.t[i0])
        body = {"schema": "rr-interval", "unit": "ms", "offsets_ms": offsets[keep].tolist(),
                "values": rr[keep].tolist()}
        yield start, start + int(offsets[keep][-1]), body, int(keep.sum())


def _steps(day: _Day, opt: DeviceOptions, rng: np.random.Generator) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    per_minute = 60 // day.step_s
    per_min_cadence = day.cadence.reshape(-1, per_minute).mean(axis=1)
    worn_min = day.worn.reshape(-1, per_minute).all(axis=1)
    asleep_min = day.asleep.reshape(-1, per_minute).any(axis=1)
    background = rng.poisson(4, per_min_cadence.size) * (rng.random(per_min_cadence.size) < 0.5)
    steps = np.where(asleep_min, 0, np.round(per_min_cadence) + background).astype(np.int64)
    per_bin = opt.steps_period_s // 60  # minutes per count; a count needs the device worn all its minutes
    if per_bin > 1:
        steps = steps.reshape(-1, per_bin).sum(axis=1)
        worn_min = worn_min.reshape(-1, per_bin).all(axis=1)
    bins = np.flatnonzero(worn_min)
    times = day.t[bins * opt.steps_period_s // day.step_s]
    yield from _regular_blocks("step-count", "steps", times, {"durations_s": np.full(bins.size, opt.steps_period_s),
                                                              "values": steps[bins]},
                               opt.block_minutes * MINUTE_MS)


def _spo2(p: Participant, day: _Day, opt: DeviceOptions,
          rng: np.random.Generator) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    seconds = np.arange(0, SECONDS_PER_DAY, opt.spo2_period_s)
    steps = seconds // day.step_s
    take = day.worn[steps] & (day.asleep[steps] | (seconds % opt.spo2_awake_period_s == 0))
    idx = steps[take]
    level = p.spo2_percent - FLARE_SPO2_DROP * day.flare[idx] + rng.normal(0, 0.7, idx.size) + _day_offset(day, 3, idx)
    asleep_idx = np.flatnonzero(day.asleep[idx])
    for _ in range(int(rng.integers(0, 4))):  # nocturnal desaturation dips of a few minutes
        if asleep_idx.size:
            at = int(rng.choice(asleep_idx))
            minutes = int(rng.integers(1, 5))
            level[at:at + max(1, round(minutes * 60 / opt.spo2_period_s))] -= rng.uniform(4, 8)
    values = np.clip(np.round(level), 70, 100)
    yield from _regular_blocks("oxygen-saturation", "%", day.t[idx], {"values": values},
                               opt.block_minutes * MINUTE_MS)


def _skin(p: Participant, day: _Day, opt: DeviceOptions,
          rng: np.random.Generator) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    steps = np.arange(0, SECONDS_PER_DAY, opt.skin_period_s) // day.step_s
    idx = steps[day.worn[steps]]
    warm = _smooth(day.asleep.astype(np.float64), 1200 / day.step_s)[idx] * 0.9
    cool = _smooth((day.cadence > 0).astype(np.float64), 300 / day.step_s)[idx] * -0.3
    drift = np.cumsum(rng.normal(0, 0.02 * np.sqrt(opt.skin_period_s / 60), idx.size))  # the same drift per hour
    level = (p.skin_temp_c + warm + cool + FLARE_SKIN_C * p.flare_gains[2] * day.flare[idx] + drift - drift.mean()
             + rng.normal(0, 0.05, idx.size))
    level = level + _day_offset(day, 2, idx)
    yield from _regular_blocks("body-temperature", "Cel", day.t[idx], {"values": np.round(level, 2)},
                               opt.block_minutes * MINUTE_MS, {"location": "wrist"})


def _acceleration(day: _Day, rng: np.random.Generator) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    for hour in range(24):
        s = (hour * 3600 + 1800) // day.step_s
        if not day.worn[s:s + max(1, 10 // day.step_s)].all():
            continue
        n = 250  # 10 s at 25 Hz
        motion = float(day.cadence[s]) / 40.0 + 0.05
        t = np.arange(n) * 40
        xyz = {axis: np.round(g + rng.normal(0, motion, n), 3).tolist()
               for axis, g in (("x", 0.4), ("y", -1.1), ("z", 9.7))}
        start = int(day.t[s])
        yield start, start + int(t[-1]), {"schema": "acceleration", "unit": "m/s2", "offsets_ms": t.tolist(),
                                          **xyz}, n


def _sleep(day: _Day) -> Iterator[tuple[int, int, dict[str, Any], int]]:
    for n in day.nights:
        if not (n.worn and day.start_ms <= n.wake_ms < day.start_ms + DAY_MS):
            continue
        minutes = (n.wake_ms - n.lights_out_ms) / MINUTE_MS
        episode = {"start_offset_ms": 0, "end_offset_ms": n.wake_ms - n.lights_out_ms,
                   "total_sleep_time_min": round(minutes - n.latency_min - n.waso_min, 1),
                   "wake_after_sleep_onset_min": round(n.waso_min, 1),
                   "latency_to_sleep_onset_min": round(n.latency_min, 1),
                   "number_of_awakenings": n.awakenings, "is_main_sleep": True}
        yield n.lights_out_ms, n.wake_ms, {"schema": "sleep-episode", "episodes": [episode]}, 1


def device_blocks(p: Participant, start_ms: int, end_ms: int, *, seed: int, options: DeviceOptions | None = None,
                  first_sequence: int = 0) -> list[SimBlock]:
    """Every block that ends in (start_ms, end_ms], with sequence numbers and due times, sorted by due time.

    A block belongs to the window in which it ends, so consecutive windows (as the device simulator walks them
    day by day) hand over blocks that cross a boundary, such as night-time sleep episodes, exactly once.

    Sequence numbers count from `first_sequence` in creation order (a caller that simulates consecutive windows
    passes on the count). Deterministic: the same arguments give identical blocks.
    """
    opt = options or DeviceOptions()
    made: list[tuple[int, int, dict[str, Any], int]] = []
    for day_start in range((start_ms // DAY_MS - 1) * DAY_MS, end_ms, DAY_MS):
        day = _day(p, day_start, seed, opt.model_step_s)
        rng = rng_for(seed, 4, p.index, day_start // DAY_MS)
        parts = [_heart_rate(day, opt), _rr_recordings(p, day, opt, rng), _steps(day, opt, rng),
                 _spo2(p, day, opt, rng), _skin(p, day, opt, rng), _sleep(day)]
        if opt.acceleration:
            parts.append(_acceleration(day, rng))
        for part in parts:
            made.extend(b for b in part if start_ms < b[1] <= end_ms)
    made.sort(key=lambda b: (b[1], str(b[2]["schema"])))
    rng = rng_for(seed, 5, p.index, start_ms // MINUTE_MS)
    out: list[SimBlock] = []
    for sequence, (start, end, body, readings) in enumerate(made, start=first_sequence):
        block = {"block_id": seeded_uuid(rng), "participant_id": p.participant_id, "sequence": sequence,
                 "start": iso_ms(start), "utc_offset_minutes": p.utc_offset_minutes, **body}
        due = end + int(rng.uniform(5, 90) * 1000)
        if rng.random() < opt.late_fraction:  # the phone was offline: delivered late, out of order
            due += int(rng.uniform(15, 8 * 60) * MINUTE_MS)
        out.append(SimBlock(due, p.device_id, p.participant_id, block, readings))
        if rng.random() < opt.duplicate_fraction:  # no answer seen: the device sends the block again
            out.append(SimBlock(due + int(rng.uniform(1, 30) * MINUTE_MS), p.device_id, p.participant_id, block,
                                readings))
    out.sort(key=lambda b: b.due_ms)
    return out


def batch_payloads(blocks: Iterable[SimBlock], max_blocks: int = 100) -> Iterator[tuple[str, dict[str, Any]]]:
    """Request bodies of at most `max_blocks` blocks, per device, in due order: (device_id, body).

    A block sent twice never shares a request with its first copy.
    """
    pending: dict[str, list[dict[str, Any]]] = {}
    for sim in blocks:
        batch = pending.setdefault(sim.device_id, [])
        if any(b["block_id"] == sim.block["block_id"] for b in batch):  # a resend goes in a later request
            yield sim.device_id, {"blocks": batch}
            batch = pending[sim.device_id] = []
        batch.append(sim.block)
        if len(batch) >= max_blocks:
            yield sim.device_id, {"blocks": batch}
            pending[sim.device_id] = []
    for device_id, batch in pending.items():
        if batch:
            yield device_id, {"blocks": batch}
