"""Dead letters as re-drive sees them, and a stage's re-drive verdict: the interface between stages and tools."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clinstream.core.avro import Codec, DecodeError
from clinstream.core.constants import HEADER_REDRIVEN_FROM, HEADER_REPLAY_RUN
from clinstream.core.dlq import Rejection
from clinstream.core.kafka import Message
from clinstream.core.records import InRecord, OutRecord
from clinstream.core.topics import DLQ_SCHEMA


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of a DLQ topic with its decoded envelope (None if the envelope itself is unreadable)."""

    partition: int
    offset: int
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    envelope: dict[str, Any] | None
    raw: bytes

    @property
    def position(self) -> str:
        """`partition:offset` in the DLQ topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        """The stage's reason (or why the envelope cannot be read)."""
        return str(self.envelope["reason"]) if self.envelope else "unreadable dead-letter envelope"

    @property
    def field_path(self) -> str | None:
        """Path of the offending field, if known."""
        return self.envelope.get("field_path") if self.envelope else None

    @property
    def original_value(self) -> bytes:
        """The rejected record's bytes."""
        return bytes(self.envelope["original_value"]) if self.envelope else b""

    @property
    def original_key(self) -> bytes | None:
        """The rejected record's key bytes."""
        key = self.envelope.get("original_key") if self.envelope else None
        return bytes(key) if key is not None else None

    @property
    def source(self) -> tuple[Any, ...]:
        """Identity of the rejected source record: topic coordinates, else a digest of its bytes."""
        env = self.envelope or {}
        if env.get("source_topic") is not None and env.get("source_offset") is not None:
            return (env["source_topic"], env.get("source_partition"), env["source_offset"])
        return ("sha256", hashlib.sha256(self.original_value).hexdigest())

    @property
    def replay_run(self) -> str | None:
        """Run id of the replay that wrote this dead letter, if one did."""
        for name, value in self.headers:
            if name == HEADER_REPLAY_RUN:
                return value.decode(errors="replace")
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A dead letter judged by the current logic: records to hand back, or why it still fails."""

    messages: list[tuple[str, Message]] = field(default_factory=list)  # (topic, message)
    rejection: Rejection | None = None
    duplicate: bool = False  # passes, and the stream already holds it: nothing to send

    @property
    def ok(self) -> bool:
        """Whether the record passes now."""
        return self.rejection is None


class Redriver(Protocol):
    """A stage's re-drive logic."""

    def judge(self, rec: DeadLetterRecord) -> Verdict:
        """Re-run the record's original bytes through the stage's current logic."""
        ...


def redriven_header(rec: DeadLetterRecord) -> tuple[str, bytes]:
    """The header that marks a re-driven record with the dead letter it comes from."""
    return (HEADER_REDRIVEN_FROM, f"{rec.envelope.get('stage') if rec.envelope else ''}:{rec.position}".encode())


def decode_envelope(codec: Codec, value: bytes) -> dict[str, Any] | None:
    """The DeadLetter record of a DLQ value, or None if it is not one."""
    try:
        if codec.writer_name(value) != DLQ_SCHEMA:
            return None
        return codec.decode(value)
    except DecodeError:
        return None


def reinjection(rec: DeadLetterRecord, topic: str) -> list[tuple[str, Message]]:
    """The original key and bytes, back to `topic`, marked with where they come from."""
    return [(topic, (rec.original_key, rec.original_value, [redriven_header(rec)]))]


def source_record(rec: DeadLetterRecord, allowed: Sequence[str]) -> InRecord | Rejection:
    """The dead letter as the input record it was, if it came from one of the stage's input topics."""
    env = rec.envelope
    if env is None:
        return Rejection("unreadable dead-letter envelope")
    topic = env.get("source_topic")
    if not isinstance(topic, str) or topic not in allowed:
        return Rejection("source topic is not an input of the stage")
    return InRecord(topic=topic, partition=int(env.get("source_partition") or 0),
                    offset=int(env.get("source_offset") or 0), key=rec.original_key, value=rec.original_value,
                    timestamp_ms=rec.timestamp_ms)


def judged_by_processor(codec: Codec, rec: DeadLetterRecord, src: InRecord, outs: Sequence[OutRecord],
                        dlq_topic: str) -> Verdict:
    """A processor's verdict on a re-run dead letter: its first dead letter's reason, or hand the record back."""
    for out in outs:
        if out.topic == dlq_topic and out.value:
            env = decode_envelope(codec, out.value)
            return Verdict(rejection=Rejection(str(env["reason"]), env.get("field_path")) if env
                           else Rejection("rejected"))
    return Verdict(reinjection(rec, src.topic))
