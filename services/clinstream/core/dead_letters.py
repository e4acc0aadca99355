"""Dead letters as re-drive sees them, and a stage's re-drive verdict: the interface between stages and tools."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from clinstream.core.constants import HEADER_REDRIVEN_FROM, HEADER_REPLAY_RUN
from clinstream.core.dlq import Rejection
from clinstream.core.kafka import Message


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
