"""Atomic replay checkpoints: plan, next offsets, counters and the processor's state in one file.

`<state_dir>/replay/<run id>/checkpoint.json` (and, for a run split into worker processes, each shard's
`shard-<k>.json` beside it) is replaced atomically (temporary file in the same directory,
fsync, rename, fsync of the directory), so a reader sees either the previous checkpoint or the new one, never
a mix. The engine writes it only after every output of the batches it covers is durable (database committed,
broker acknowledged), so resuming from it re-processes at most the batches after it, whose outputs are
idempotent. JSON through orjson; the stdlib (marked) when a state value holds an integer beyond 64 bits.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from clinstream.core.config import Settings
from clinstream.core.timeutil import now_ms
from clinstream.replay.plan import ReplayPlan

FORMAT = 1
_BIG_JSON = b"J"


@dataclass(slots=True)
class Checkpoint:
    """Progress of one replay run."""

    plan: ReplayPlan
    next_offsets: dict[str, int]  # "topic/partition" -> next offset to read
    counters: dict[str, int] = field(default_factory=dict)
    state: Any = None
    completed: bool = False
    elapsed_s: float = 0.0
    updated_at_ms: int = 0

    def to_bytes(self) -> bytes:
        """The file content."""
        doc = {"format": FORMAT, "plan": self.plan.to_json(), "next_offsets": self.next_offsets,
               "counters": self.counters, "completed": self.completed, "elapsed_s": self.elapsed_s,
               "updated_at_ms": self.updated_at_ms, "state": self.state}
        try:
            return orjson.dumps(doc)
        except TypeError:  # an integer beyond 64 bits
            return _BIG_JSON + json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Inverse of `to_bytes`."""
        doc = json.loads(data[1:]) if data[:1] == _BIG_JSON else orjson.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError("unknown checkpoint format")
        return cls(plan=ReplayPlan.from_json(doc["plan"]), next_offsets={k: int(v) for k, v in
                                                                           doc["next_offsets"].items()},
                   counters={k: int(v) for k, v in doc["counters"].items()}, state=doc["state"],
                   completed=bool(doc["completed"]), elapsed_s=float(doc.get("elapsed_s", 0.0)),
                   updated_at_ms=int(doc.get("updated_at_ms", 0)))


def run_dir(settings: Settings, run_id: str) -> Path:
    """Directory of a replay run's checkpoint."""
    return settings.state_dir / "replay" / run_id


def checkpoint_path(settings: Settings, run_id: str, shard: int | None = None) -> Path:
    """Path of a run's checkpoint file, or of one shard's."""
    return run_dir(settings, run_id) / ("checkpoint.json" if shard is None else f"shard-{shard}.json")


def save(settings: Settings, checkpoint: Checkpoint) -> Path:
    """Write a checkpoint atomically; returns its path."""
    path = checkpoint_path(settings, checkpoint.plan.run_id, checkpoint.plan.shard)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    checkpoint.updated_at_ms = now_ms()
    data = checkpoint.to_bytes()
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(settings: Settings, run_id: str, shard: int | None = None) -> Checkpoint | None:
    """A run's checkpoint (or one shard's), or None if it never started."""
    path = checkpoint_path(settings, run_id, shard)
    if not path.exists():
        return None
    return Checkpoint.from_bytes(path.read_bytes())
