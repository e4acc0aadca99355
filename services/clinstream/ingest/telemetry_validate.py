"""Validation of telemetry blocks: pydantic for shape and types, numpy for ranges, order and time; Avro records out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import TypeAdapter, ValidationError

from clinstream.core.dlq import Rejection
from clinstream.core.timeutil import DAY_MS
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.errors import ApiError
from clinstream.ingest.telemetry_models import (
    SCHEMA_NAMES,
    AccelerationBlock,
    AnyBlock,
    BodyTemperatureBlock,
    HeartRateBlock,
    OxygenSaturationBlock,
    RRIntervalBlock,
    SleepEpisodeBlock,
    StepCountBlock,
    TelemetryBlockIn,
    ValuesBlock,
)
from clinstream.ingest.validation_errors import field_path, first_rejection

NS = "org.clinstream.telemetry."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_BLOCK: TypeAdapter[AnyBlock] = TypeAdapter(TelemetryBlockIn)


@dataclass(frozen=True, slots=True)
class Columns:
    """A block's offsets and values as the numpy arrays its checks ran on (blocks of one value per offset)."""

    offsets_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AcceptedBlock:
    """A valid block, as the Avro TelemetryBlock record to produce (timestamps as epoch-ms ints, the block id a
    string: `Codec.encode_many(plain=True)` encodes it without logical-type conversion), with its columns when it
    holds one value per offset (`TelemetryEncoder` writes those without a Python object per reading)."""

    index: int
    block_id: str
    participant_id: str
    kind: str
    readings: int
    record: dict[str, Any]
    columns: Columns | None = None


@dataclass(frozen=True, slots=True)
class RejectedBlock:
    """A refused block: why, and its JSON bytes for the dead-letter topic."""

    index: int
    block_id: str | None
    rejection: Rejection
    original: bytes


@dataclass(frozen=True, slots=True)
class _ValuesCheck:
    """How a block of one number per offset is checked and written to Avro."""

    branch: str  # the Avro measurement branch
    field: str  # its array of values
    unit: str  # named in a range error
    bounds: Callable[[IngestSettings], tuple[float, float]]  # the plausible range of the values
    strict: bool = False  # offsets strictly increasing (RR: one interval per beat)


_VALUES_CHECKS: dict[type[ValuesBlock], _ValuesCheck] = {
    HeartRateBlock: _ValuesCheck("HeartRateSamples", "bpm", "beats/min", lambda lim: (lim.hr_min_bpm, lim.hr_max_bpm)),
    RRIntervalBlock: _ValuesCheck("RRIntervalSamples", "rr_ms", "ms", lambda lim: (lim.rr_min_ms, lim.rr_max_ms),
                                  strict=True),
    OxygenSaturationBlock: _ValuesCheck("OxygenSaturationSamples", "spo2_percent", "%",
                                        lambda lim: (lim.spo2_min_percent, lim.spo2_max_percent)),
    BodyTemperatureBlock: _ValuesCheck("SkinTemperatureSamples", "celsius", "Cel",
                                       lambda lim: (lim.skin_min_c, lim.skin_max_c)),
}


class _Reject(Exception):
    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(reason, path)


def valid_uuid(text: str) -> str | None:
    """The canonical form of a UUID string, or None."""
    try:
        return str(UUID(text))
    except ValueError:
        return None


def instant_ms(value: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (sub-millisecond parts are truncated)."""
    return (value - _EPOCH) // _MS


def _first(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> int | None:
    """The index of the mask's first true element, if any."""
    return int(np.argmax(mask)) if mask.any() else None


def _check_range(values: list[float] | list[int] | npt.NDArray[np.float64], lo: float, hi: float, unit: str,
                 path: str) -> None:
    arr = np.asarray(values, dtype=np.float64)
    inside = (arr >= lo) & (arr <= hi)  # NaN fails both comparisons
    if not inside.all():
        outside = ~inside
        raise _Reject(f"{int(np.count_nonzero(outside))} value(s) outside the plausible range {lo:g}-{hi:g} {unit}",
                      f"{path}[{int(np.argmax(outside))}]")


def _check_offsets(offsets: list[int] | npt.NDArray[np.int64], *, strict: bool, span_ms: int, path: str) -> None:
    if len(offsets) > 1:
        arr = np.asarray(offsets, dtype=np.int64)
        backwards = arr[1:] <= arr[:-1] if strict else arr[1:] < arr[:-1]
        if backwards.any():
            order = "strictly increasing" if strict else "non-decreasing"
            raise _Reject(f"offsets must be {order}", f"{path}[{int(np.argmax(backwards)) + 1}]")
    if offsets[-1] > span_ms:
        raise _Reject(f"a block may span at most {span_ms} ms", f"{path}[{len(offsets) - 1}]")


def _equal_lengths(prefix: str, **arrays: list[Any]) -> None:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    expected = lengths["offsets_ms"]
    for name, n in lengths.items():
        if n != expected:
            raise _Reject(f"{name} has {n} entries but offsets_ms has {expected}", f"{prefix}.{name}")


class TelemetryValidator:
    """Validates blocks of one request against the site's limits and builds their Avro records."""

    def __init__(self, limits: IngestSettings, site_id: str) -> None:
        self.limits = limits
        self.site_id = site_id

    def envelope(self, body: Any) -> list[Any]:
        """The request's block list; the whole request is refused (422) if the envelope is wrong."""
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_request", "the body must be a JSON object with a 'blocks' array")
        extra = [k for k in body if k != "blocks"]
        if extra:
            raise ApiError(422, "invalid_request", "unexpected top-level field(s); only 'blocks' is allowed")
        blocks = body.get("blocks")
        if not isinstance(blocks, list):
            raise ApiError(422, "invalid_request", "'blocks' must be an array", field_path="blocks")
        if not blocks:
            raise ApiError(422, "invalid_request", "'blocks' must not be empty", field_path="blocks")
        if len(blocks) > self.limits.max_blocks_per_request:
            raise ApiError(422, "too_many_blocks", f"at most {self.limits.max_blocks_per_request} blocks per "
                           "request", field_path="blocks")
        return blocks

    @staticmethod
    def foreign_block(blocks: list[Any], participant_id: str) -> int | None:
        """Index of the first block that names a participant other than the device's, if any."""
        for i, block in enumerate(blocks):
            if isinstance(block, dict):
                claimed = block.get("participant_id")
                if isinstance(claimed, str) and claimed != participant_id:
                    return i
        return None

    def validate(self, index: int, raw: Any, *, device_id: str, received_ms: int,
                 time_zone: str | None = None) -> AcceptedBlock | RejectedBlock:
        """Validate one block; never raises for bad input. `time_zone`: the participant's, from the credential."""
        prefix = f"blocks[{index}]"
        try:
            block = _BLOCK.validate_python(raw)
        except ValidationError as exc:
            return self._rejected(index, raw, first_rejection(exc, prefix, tag_field="schema",
                                                              tag_values=SCHEMA_NAMES))
        try:
            measurement, readings, end_ms, columns = self._measurement(block, prefix)
            start_ms = instant_ms(block.start)
            if start_ms < received_ms - self.limits.max_block_age_days * DAY_MS:
                raise _Reject(f"the block starts more than {self.limits.max_block_age_days} days ago",
                              f"{prefix}.start")
            if start_ms + end_ms > received_ms + self.limits.max_future_skew_s * 1000:
                raise _Reject(f"samples lie more than {self.limits.max_future_skew_s} s in the future "
                              "(device clock?)", f"{prefix}.start")
        except _Reject as rej:
            return self._rejected(index, raw, rej.rejection, str(block.block_id))
        record = {
            "block_id": str(block.block_id),
            "site_id": self.site_id,
            "participant_id": block.participant_id,
            "device_id": device_id,
            "sequence": block.sequence,
            "start": start_ms,
            "utc_offset_minutes": block.utc_offset_minutes,
            "received_at": received_ms,
            "measurement": measurement,
            "time_zone": time_zone,
        }
        return AcceptedBlock(index, str(block.block_id), block.participant_id, block.kind, readings, record, columns)

    @staticmethod
    def _rejected(index: int, raw: Any, rejection: Rejection, block_id: str | None = None) -> RejectedBlock:
        if block_id is None and isinstance(raw, dict) and isinstance(raw.get("block_id"), str):
            block_id = valid_uuid(raw["block_id"])
        return RejectedBlock(index, block_id, rejection, orjson.dumps(raw))

    def _measurement(self, block: AnyBlock, prefix: str) -> tuple[tuple[str, dict[str, Any]], int, int,
                                                                  Columns | None]:
        """The Avro measurement branch, the number of readings, the last instant (ms after start) and the columns
        of a block of one value per offset."""
        lim = self.limits
        span = lim.max_block_span_ms
        if isinstance(block, SleepEpisodeBlock):
            return (*self._sleep(block, prefix), None)
        offsets = block.offsets_ms
        if len(offsets) > lim.max_block_samples:
            raise _Reject(f"a block holds at most {lim.max_block_samples} samples", f"{prefix}.offsets_ms")
        opath = f"{prefix}.offsets_ms"
        vpath = f"{prefix}.values"
        last = offsets[-1]
        body: dict[str, Any]
        columns = None
        if isinstance(block, ValuesBlock):
            check = _VALUES_CHECKS[type(block)]
            _equal_lengths(prefix, offsets_ms=offsets, values=block.values)
            columns = Columns(np.asarray(offsets, dtype=np.int64), np.asarray(block.values, dtype=np.float64))
            _check_offsets(columns.offsets_ms, strict=check.strict, span_ms=span, path=opath)
            _check_range(columns.values, *check.bounds(lim), check.unit, vpath)
            branch, body = check.branch, {"offsets_ms": offsets, check.field: block.values}
            if isinstance(block, BodyTemperatureBlock):
                body["location"] = block.location.upper()
        elif isinstance(block, StepCountBlock):
            _equal_lengths(prefix, offsets_ms=offsets, durations_s=block.durations_s, values=block.values)
            _check_offsets(offsets, strict=False, span_ms=span, path=opath)
            self._check_steps(block, prefix)
            last = offsets[-1] + block.durations_s[-1] * 1000
            branch, body = "StepCountSamples", {"offsets_ms": offsets, "durations_s": block.durations_s,
                                                "steps": block.values}
        else:
            assert isinstance(block, AccelerationBlock)
            _equal_lengths(prefix, offsets_ms=offsets, x=block.x, y=block.y, z=block.z)
            _check_offsets(offsets, strict=False, span_ms=span, path=opath)
            for axis, values in (("x", block.x), ("y", block.y), ("z", block.z)):
                _check_range(values, -lim.accel_max_m_s2, lim.accel_max_m_s2, "m/s2", f"{prefix}.{axis}")
            branch, body = "AccelerationSamples", {"offsets_ms": offsets, "x": block.x, "y": block.y, "z": block.z}
        return (NS + branch, body), len(offsets), last, columns

    def _check_steps(self, block: StepCountBlock, prefix: str) -> None:
        offsets = np.asarray(block.offsets_ms, dtype=np.int64)
        durations = np.asarray(block.durations_s, dtype=np.int64)
        steps = np.asarray(block.values, dtype=np.int64)
        too_fast = _first(steps > durations * self.limits.max_step_rate_per_s)
        if too_fast is not None:
            raise _Reject(f"more than {self.limits.max_step_rate_per_s:g} steps per second", field_path(
                prefix, ["values", too_fast]))
        if offsets.size > 1:
            overlap = _first(offsets[:-1] + durations[:-1] * 1000 > offsets[1:])
            if overlap is not None:
                raise _Reject("counting intervals overlap", field_path(prefix, ["offsets_ms", overlap + 1]))
        if int(offsets[-1] + durations[-1] * 1000) > self.limits.max_block_span_ms:
            raise _Reject(f"a block may span at most {self.limits.max_block_span_ms} ms",
                          field_path(prefix, ["durations_s", int(offsets.size - 1)]))

    def _sleep(self, block: SleepEpisodeBlock, prefix: str) -> tuple[tuple[str, dict[str, Any]], int, int]:
        episodes: list[dict[str, Any]] = []
        last = 0
        for i, ep in enumerate(block.episodes):
            path = f"{prefix}.episodes[{i}]"
            if ep.end_offset_ms <= ep.start_offset_ms:
                raise _Reject("an episode must end after it starts", f"{path}.end_offset_ms")
            if ep.end_offset_ms > self.limits.max_block_span_ms:
                raise _Reject(f"a block may span at most {self.limits.max_block_span_ms} ms", f"{path}.end_offset_ms")
            minutes = (ep.end_offset_ms - ep.start_offset_ms) / 60_000
            if ep.total_sleep_time_min + ep.wake_after_sleep_onset_min + ep.latency_to_sleep_onset_min > minutes + 1:
                raise _Reject("sleep, wake and latency minutes exceed the episode's length",
                              f"{path}.total_sleep_time_min")
            last = max(last, ep.end_offset_ms)
            episodes.append(ep.model_dump())
        return (NS + "SleepEpisodes", {"episodes": episodes}), len(episodes), last
