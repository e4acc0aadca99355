"""Telemetry intake: validate a request's blocks, produce the valid ones and dead-letter the rest, all acked."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from clinstream.core.avro import Codec, get_codec, subject_key
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.kafka import Message
from clinstream.core.topics import RAW_TELEMETRY, Stage, dlq
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.delivery import deliver
from clinstream.ingest.dlq_context import context_headers, telemetry_context
from clinstream.ingest.errors import ApiError
from clinstream.ingest.gateway_db import DevicePrincipal
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.producer import AsyncDurableProducer
from clinstream.ingest.telemetry_encoding import TelemetryEncoder
from clinstream.ingest.telemetry_validate import AcceptedBlock, RejectedBlock, TelemetryValidator

JSON = "application/json"
DUPLICATE_IN_REQUEST = "duplicate block_id in this request"


@dataclass
class TelemetryOutcome:
    """What happened to each block of one request."""

    accepted: list[AcceptedBlock] = field(default_factory=list)
    rejected: list[RejectedBlock] = field(default_factory=list)
    received_ms: int | None = None  # receipt of the request (on its dead letters, for a re-drive)

    @property
    def readings(self) -> int:
        """Readings in the accepted blocks."""
        return sum(b.readings for b in self.accepted)


@dataclass
class PreparedTelemetry:
    """A validated, encoded request, ready to be produced."""

    outcome: TelemetryOutcome
    raw: list[Message]
    dead: list[Message]


class TelemetryIntake:
    """POST /v1/telemetry minus HTTP: the same code serves the gateway, tests and benchmarks."""

    def __init__(self, site_id: str, limits: IngestSettings, producer: AsyncDurableProducer,
                 metrics: GatewayMetrics, codec: Codec | None = None) -> None:
        self.site_id = site_id
        self.validator = TelemetryValidator(limits, site_id)
        self.producer = producer
        self.metrics = metrics
        self.codec = codec or get_codec()
        self.encoder = TelemetryEncoder(self.codec)
        self.raw_topic = RAW_TELEMETRY.name(site_id)
        self.dlq_topic = dlq(Stage.INGEST).name(site_id)

    def check(self, body: Any, device: DevicePrincipal, received_ms: int) -> TelemetryOutcome:
        """Validate every block (422 for a wrong envelope, 403 for a block of another participant)."""
        blocks = self.validator.envelope(body)
        foreign = self.validator.foreign_block(blocks, device.participant_id)
        if foreign is not None:
            self.metrics.auth_failures.labels("foreign_participant").inc()
            raise ApiError(403, "forbidden_participant", "this device is not registered for the participant of "
                           "the block", field_path=f"blocks[{foreign}].participant_id")
        outcome = TelemetryOutcome(received_ms=received_ms)
        seen: set[str] = set()
        for i, raw in enumerate(blocks):
            result = self.validator.validate(i, raw, device_id=device.device_id, received_ms=received_ms,
                                             time_zone=device.time_zone)
            if isinstance(result, AcceptedBlock) and result.block_id in seen:
                result = RejectedBlock(i, result.block_id, Rejection(DUPLICATE_IN_REQUEST, f"blocks[{i}].block_id"),
                                       orjson.dumps(raw))
            if isinstance(result, AcceptedBlock):
                seen.add(result.block_id)
                outcome.accepted.append(result)
            else:
                outcome.rejected.append(result)
        return outcome

    def encode(self, outcome: TelemetryOutcome, device: DevicePrincipal) -> tuple[list[Message], list[Message]]:
        """Kafka messages of the accepted blocks and the DLQ messages of the rejected ones."""
        key = subject_key(self.site_id, device.participant_id)
        try:
            values = self.encoder.encode(outcome.accepted)
        except Exception:  # a validated block that Avro refuses is a gateway bug; dead-letter it, do not 500
            values = []
            kept: list[AcceptedBlock] = []
            for block in outcome.accepted:
                try:
                    values.append(self.codec.encode(RAW_TELEMETRY.value_schema, block.record))
                    kept.append(block)
                except Exception as exc:
                    outcome.rejected.append(RejectedBlock(block.index, block.block_id, Rejection(
                        f"not encodable as TelemetryBlock ({type(exc).__name__})", f"blocks[{block.index}]"),
                        orjson.dumps(block.record)))
            outcome.accepted = kept
        raw: list[Message] = [(key, value, None) for value in values]
        context = (context_headers(telemetry_context(outcome.received_ms, device.device_id, device.participant_id))
                   if outcome.received_ms is not None else [])
        dead = [dead_letter(self.codec, site_id=self.site_id, stage=Stage.INGEST, rejection=r.rejection,
                            original_value=r.original, original_key=key, content_type=JSON, extra_headers=context)
                for r in outcome.rejected]
        return raw, dead

    def prepare(self, body: Any, device: DevicePrincipal, received_ms: int) -> PreparedTelemetry:
        """The CPU part of a request (validation and Avro encoding); safe to run in a worker thread."""
        outcome = self.check(body, device, received_ms)
        raw, dead = self.encode(outcome, device)
        return PreparedTelemetry(outcome, raw, dead)

    async def deliver(self, prepared: PreparedTelemetry) -> TelemetryOutcome:
        """Produce accepted blocks and dead letters; returns once the broker acked all of them."""
        await deliver(self.producer, self.metrics, "telemetry", [(self.raw_topic, prepared.raw)],
                      [(self.dlq_topic, prepared.dead)])
        outcome = prepared.outcome
        blocks: Counter[str] = Counter()
        readings: Counter[str] = Counter()
        for block in outcome.accepted:  # one metric update per kind, not per block
            blocks[block.kind] += 1
            readings[block.kind] += block.readings
        for kind, n in blocks.items():
            self.metrics.blocks.labels(kind, "accepted").inc(n)
            self.metrics.readings.labels(kind).inc(readings[kind])
        if outcome.rejected:
            self.metrics.blocks.labels("any", "rejected").inc(len(outcome.rejected))
        return outcome

    async def submit(self, body: Any, device: DevicePrincipal, received_ms: int) -> TelemetryOutcome:
        """Validate, encode and deliver in one go (tests, benchmarks)."""
        return await self.deliver(self.prepare(body, device, received_ms))
