"""The JSON API of POST /v1/telemetry: measurement blocks shaped after Open mHealth / IEEE 1752.1, and the answer.

A request is a batch of blocks. A block holds the samples of one measurement kind of one device for one
participant, column-wise: `offsets_ms[i]` is the instant of sample `i` in milliseconds after `start`, and each
value array has one entry per offset. The field `schema` names the Open mHealth schema of the block and decides
which arrays it carries and which `unit` it must declare:

| schema | unit | arrays |
|---|---|---|
| heart-rate | beats/min | offsets_ms, values |
| rr-interval | ms | offsets_ms (instant of the beat ending the interval, strictly increasing), values |
| step-count | steps | offsets_ms (start of each counting interval), durations_s, values (integers) |
| oxygen-saturation | % | offsets_ms, values |
| body-temperature | Cel (or °C) | offsets_ms, values; optional `location` (wrist, finger, chest, other) |
| acceleration | m/s2 | offsets_ms, x, y, z |
| sleep-episode | (none) | episodes |

The device is known from its credential, so blocks do not name it; `participant_id` must be the participant the
device is registered for. Array element types are checked here; plausible ranges, ordering and clock skew are
checked by `telemetry_validate` (with numpy, per array rather than per reading).

Answers: 202 once the broker acknowledged (acks=all) every accepted block, listing accepted block ids and each
refused block with its field path and reason (refused blocks go to the ingest dead-letter topic); 422 if no block
was accepted or the envelope is wrong; 400 malformed JSON or gzip; 401 missing/invalid/revoked credential; 403 a
block names another participant (nothing of the request is accepted); 413 body too large as sent or after gunzip;
415 not JSON or an unsupported Content-Encoding; 503 + Retry-After when the broker did not acknowledge within the
deadline (nothing is promised; send the same blocks again, consumers deduplicate by block_id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints

from clinstream.core.constants import (
    INGEST_MAX_BLOCK_SAMPLES,
    INGEST_MAX_BLOCKS_PER_REQUEST,
    INGEST_MAX_SLEEP_EPISODES,
)

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _text_instant(value: Any) -> Any:
    """Instants must be RFC 3339 strings with an offset, never bare numbers."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset, e.g. 2026-01-01T08:00:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_text_instant),
                    Field(description="RFC 3339 date-time with offset, e.g. 2026-01-01T08:00:00Z.")]
ParticipantId = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
                          Field(description="Site participant id the device is registered for.",
                                examples=["P-000123"])]
SampleCount = Field(min_length=1, max_length=INGEST_MAX_BLOCK_SAMPLES)
OffsetsMs = Annotated[list[Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)]], SampleCount,
                      Field(description="Sample instants in ms after `start`; non-decreasing.")]
Numbers = Annotated[list[Annotated[float, Strict()]], SampleCount,
                    Field(description="One number per offset (JSON numbers; booleans and strings are refused).")]
Counts = Annotated[list[Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)]], SampleCount]


class _Block(BaseModel):
    """Fields every block has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_id: UUID = Field(description="Random UUID the device assigns to the block; a resend keeps it.")
    participant_id: ParticipantId
    sequence: Annotated[int, Strict(), Field(ge=0, le=INT64_MAX, description=(
        "Per-device block counter, increasing by one per block the device creates (over all schemas)."))]
    start: Instant
    utc_offset_minutes: Annotated[int, Strict(), Field(ge=-840, le=840, description=(
        "The device's offset from UTC at `start`, in minutes (60 for CET)."))]


class ValuesBlock(_Block):
    """A block of one number per offset (in the field order schema, unit, offsets_ms, values)."""

    kind: str = Field(alias="schema")
    unit: str
    offsets_ms: OffsetsMs
    values: Numbers


class HeartRateBlock(ValuesBlock):
    """Heart rate (Open mHealth heart-rate; LOINC 8867-4)."""

    kind: Literal["heart-rate"] = Field(alias="schema")
    unit: Literal["beats/min"]


class RRIntervalBlock(ValuesBlock):
    """A contiguous run of RR (inter-beat) intervals (Open mHealth rr-interval)."""

    kind: Literal["rr-interval"] = Field(alias="schema")
    unit: Literal["ms"]


class StepCountBlock(_Block):
    """Steps over counting intervals (Open mHealth step-count; LOINC 55423-8)."""

    kind: Literal["step-count"] = Field(alias="schema")
    unit: Literal["steps"]
    offsets_ms: OffsetsMs
    durations_s: Annotated[list[Annotated[int, Strict(), Field(ge=1, le=86_400)]], SampleCount,
                           Field(description="Length of each counting interval in seconds.")]
    values: Annotated[Counts, Field(description="Steps counted in each interval.")]


class OxygenSaturationBlock(ValuesBlock):
    """SpO2 by peripheral pulse oximetry (Open mHealth oxygen-saturation; LOINC 59408-5)."""

    kind: Literal["oxygen-saturation"] = Field(alias="schema")
    unit: Literal["%"]


class BodyTemperatureBlock(ValuesBlock):
    """Skin temperature (Open mHealth body-temperature at a skin location)."""

    kind: Literal["body-temperature"] = Field(alias="schema")
    unit: Literal["Cel", "°C"]
    location: Literal["wrist", "finger", "chest", "other"] = "other"


class AccelerationBlock(_Block):
    """Tri-axial acceleration (Open mHealth acceleration)."""

    kind: Literal["acceleration"] = Field(alias="schema")
    unit: Literal["m/s2"]
    offsets_ms: OffsetsMs
    x: Numbers
    y: Numbers
    z: Numbers


class SleepEpisodeIn(BaseModel):
    """One sleep episode (Open mHealth sleep-episode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_offset_ms: Annotated[int, Strict(), Field(ge=0, le=INT32_MAX, description="Lights out, ms after start.")]
    end_offset_ms: Annotated[int, Strict(), Field(ge=0, le=INT32_MAX, description="Final awakening.")]
    total_sleep_time_min: Annotated[float, Strict(), Field(ge=0, le=1440)]
    wake_after_sleep_onset_min: Annotated[float, Strict(), Field(ge=0, le=1440)]
    latency_to_sleep_onset_min: Annotated[float, Strict(), Field(ge=0, le=1440)]
    number_of_awakenings: Annotated[int, Strict(), Field(ge=0, le=1000)]
    is_main_sleep: Annotated[bool, Strict()]


class SleepEpisodeBlock(_Block):
    """Sleep episodes reported by the device (Open mHealth sleep-episode); no unit."""

    kind: Literal["sleep-episode"] = Field(alias="schema")
    episodes: Annotated[list[SleepEpisodeIn], Field(min_length=1, max_length=INGEST_MAX_SLEEP_EPISODES)]


AnyBlock = (HeartRateBlock | RRIntervalBlock | StepCountBlock | OxygenSaturationBlock | BodyTemperatureBlock
            | AccelerationBlock | SleepEpisodeBlock)
TelemetryBlockIn = Annotated[AnyBlock, Field(discriminator="kind")]
SCHEMA_NAMES: tuple[str, ...] = ("heart-rate", "rr-interval", "step-count", "oxygen-saturation",
                                 "body-temperature", "acceleration", "sleep-episode")


class TelemetryBatch(BaseModel):
    """Body of POST /v1/telemetry (Content-Type application/json, optionally Content-Encoding gzip)."""

    blocks: Annotated[list[TelemetryBlockIn], Field(min_length=1, max_length=INGEST_MAX_BLOCKS_PER_REQUEST)]


class RejectedItem(BaseModel):
    """One block or event the gateway refused; it went to the ingest dead-letter topic."""

    index: int = Field(description="Position of the item in the request's array.")
    id: str | None = Field(default=None, description="Its block_id / event_id, if it had a valid one.")
    field_path: str | None = Field(default=None, description="Path of the offending field, e.g. blocks[2].values[7].")
    reason: str = Field(description="Why it was refused.")


class TelemetryAnswer(BaseModel):
    """Answer of POST /v1/telemetry. 202: every accepted block is durably in Kafka; 422: none was accepted."""

    accepted: list[str] = Field(description="block_id of every accepted block.")
    rejected: list[RejectedItem] = Field(description="Every refused block, with field path and reason.")
    readings_accepted: int = Field(description="Readings (samples, or episodes) in the accepted blocks.")
    received_at: datetime = Field(description="When the gateway received the request (UTC).")
