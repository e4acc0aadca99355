"""Decodes and validates pseudonymised telemetry blocks one at a time into numpy columns (`block_batch`'s reference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from clinstream.core.avro import Codec, DecodeError
from clinstream.core.timeutil import MINUTE_MS, to_ms
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.features.local_days import zone

NS = "org.clinstream.telemetry."
HEART_RATE_SAMPLES = NS + "HeartRateSamples"
RR_SAMPLES = NS + "RRIntervalSamples"
STEP_SAMPLES = NS + "StepCountSamples"
SPO2_SAMPLES = NS + "OxygenSaturationSamples"
SKIN_SAMPLES = NS + "SkinTemperatureSamples"
SLEEP_EPISODES = NS + "SleepEpisodes"
ACCELERATION_SAMPLES = NS + "AccelerationSamples"

NO_TIMES: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)  # shared by blocks without samples (read-only)
NO_VALUES: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
NO_TIMES.flags.writeable = NO_VALUES.flags.writeable = False
VALUE_FIELD = {HEART_RATE_SAMPLES: "bpm", RR_SAMPLES: "rr_ms", SPO2_SAMPLES: "spo2_percent", SKIN_SAMPLES: "celsius"}


class BlockError(ValueError):
    """A block that cannot be used; its reason and field path never contain identifiers or values."""

    def __init__(self, reason: str, field_path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field_path = field_path


@dataclass(frozen=True, slots=True)
class SleepEpisode:
    """One sleep episode in absolute UTC milliseconds."""

    start_ms: int
    end_ms: int
    total_sleep_time_min: float


@dataclass(slots=True)
class Block:
    """One decoded telemetry block: header fields plus its samples as columns.

    `t_ms` are absolute event times (block start + offsets; for steps the interval starts, for RR the beat that ends
    each interval); `values` the measured values (steps as float counts). Sleep blocks carry `episodes` instead.
    """

    block_id: str
    pseudonym: str
    device: str
    sequence: int
    start_ms: int
    utc_offset_min: int
    received_ms: int
    measurement: str
    t_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    episodes: list[SleepEpisode] = field(default_factory=list)
    durations_ms: npt.NDArray[np.int64] = field(default_factory=lambda: NO_TIMES)  # steps
    time_zone: str | None = None  # the block's IANA zone as sent (None: the site default applies)
    zone: str | None = None  # the zone that defines LOCAL_DAY windows (set by version >= 2; None: by utc offset)
    max_event_ms: int | None = None  # the latest event time (None without readings), set by the decoders

    @property
    def offset_ms(self) -> int:
        """The block's UTC offset in ms."""
        return self.utc_offset_min * MINUTE_MS

    @property
    def size(self) -> int:
        """Number of readings (samples or episodes)."""
        return len(self.episodes) if self.measurement == SLEEP_EPISODES else len(self.t_ms)


def _int_array(values: Any, path: str) -> npt.NDArray[np.int64]:
    try:
        return np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise BlockError("non-integer array", path) from None


def decode_block(codec: Codec, value: bytes, max_future_skew_ms: int) -> Block:
    """Decode and validate one PSEUDO_TELEMETRY value; raises BlockError (or DecodeError) for unusable input."""
    record = codec.decode_plain(value)  # start and received_at as epoch ms
    if codec.writer_name(value) != PSEUDO_TELEMETRY.value_schema:
        raise DecodeError("not a PseudonymisedTelemetryBlock")
    measurement = record["measurement"]
    if not (isinstance(measurement, tuple) and len(measurement) == 2):
        raise BlockError("measurement is not a known record", "measurement")
    name, body = measurement
    start = to_ms(record["start"])
    received = to_ms(record["received_at"])
    block = Block(
        block_id=str(record["block_id"]), pseudonym=record["participant_pseudonym"],
        device=record["device_pseudonym"], sequence=int(record["sequence"]), start_ms=start,
        utc_offset_min=int(record["utc_offset_minutes"]), received_ms=received, measurement=name,
        t_ms=NO_TIMES, values=NO_VALUES, time_zone=record.get("time_zone"),
    )
    if block.time_zone is not None and zone(block.time_zone) is None:
        raise BlockError("not an IANA time zone", "time_zone")
    if not -18 * 60 <= block.utc_offset_min <= 18 * 60:
        raise BlockError("utc offset outside +-18 h", "utc_offset_minutes")
    if name == SLEEP_EPISODES:
        _sleep(block, body)
        block.max_event_ms = max((e.end_ms for e in block.episodes), default=None)
    elif name == ACCELERATION_SAMPLES:
        return block  # no features from acceleration: no samples kept
    elif name == STEP_SAMPLES:
        offsets = _int_array(body["offsets_ms"], "measurement.offsets_ms")
        steps = _int_array(body["steps"], "measurement.steps")
        durations = _int_array(body["durations_s"], "measurement.durations_s")
        if not len(offsets) == len(steps) == len(durations):
            raise BlockError("array lengths differ", "measurement")
        if (steps < 0).any() or (durations < 0).any():
            raise BlockError("negative steps or duration", "measurement.steps")
        block.t_ms, block.values = start + offsets, steps.astype(np.float64)
        block.durations_ms = durations * 1000
        _offset_range(block, body["offsets_ms"])
    elif name in VALUE_FIELD:
        offsets = _int_array(body["offsets_ms"], "measurement.offsets_ms")
        values = np.asarray(body[VALUE_FIELD[name]], dtype=np.float64)
        if len(offsets) != len(values):
            raise BlockError("array lengths differ", "measurement")
        if name == RR_SAMPLES and len(offsets) > 1 and (np.diff(offsets) < 0).any():
            raise BlockError("RR offsets not in beat order", "measurement.offsets_ms")
        block.t_ms, block.values = start + offsets, values
        _offset_range(block, body["offsets_ms"])
    else:
        raise BlockError("unknown measurement", "measurement")
    latest = block.max_event_ms
    if latest is not None and latest > received + max_future_skew_ms:
        raise BlockError("event time after receipt (device clock)", "measurement.offsets_ms")
    return block


def _offset_range(block: Block, offsets: list[int]) -> None:
    """Refuse a negative sample offset and set the block's latest event time (on the decoded list: a numpy
    reduction costs more than the whole list on a block's few dozen samples)."""
    if offsets:
        if min(offsets) < 0:
            raise BlockError("negative sample offset", "measurement.offsets_ms")
        block.max_event_ms = block.start_ms + int(max(offsets))


def _sleep(block: Block, body: dict[str, Any]) -> None:
    for i, ep in enumerate(body["episodes"]):
        s, e, tst = int(ep["start_offset_ms"]), int(ep["end_offset_ms"]), float(ep["total_sleep_time_min"])
        if s < 0 or e < s:
            raise BlockError("episode ends before it starts", f"measurement.episodes[{i}]")
        if not np.isfinite(tst) or tst < 0 or tst > (e - s) / MINUTE_MS + 1e-6:
            raise BlockError("total sleep time outside the episode", f"measurement.episodes[{i}].total_sleep_time_min")
        block.episodes.append(SleepEpisode(block.start_ms + s, block.start_ms + e, tst))
