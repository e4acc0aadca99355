"""Reading a stage's dead-letter topic: decoded envelopes, summaries by reason, and identifier-free views.

A dead letter's reason and field path never carry identifiers (the stages guarantee it); its original key and
bytes may (raw-zone stages: ingest, pseudonymise). Views therefore show sizes and digests of the original
bytes by default; the bytes themselves (hex / escaped) only when asked to (`show_payload`).
The same source record may be dead-lettered more than once (a crash before the commit, a replay); summaries
count records and distinct sources (source topic, partition, offset, or the digest of the bytes when the
record did not come from a topic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clinstream.core.avro import Codec, DecodeError, get_codec
from clinstream.core.config import Settings
from clinstream.core.dead_letters import DeadLetterRecord, decode_envelope
from clinstream.core.stream_host import read_range
from clinstream.core.timeutil import from_ms
from clinstream.core.topics import Stage, Zone, dlq


def _header(header: Any) -> tuple[str, bytes]:
    name, value = header
    return str(name), value.encode() if isinstance(value, str) else bytes(value or b"")


def parse_position(text: str) -> tuple[int, int]:
    """`partition:offset` -> (partition, offset)."""
    p, _, o = text.partition(":")
    if not (p.isdigit() and o.isdigit()):
        raise ValueError("a position is partition:offset, e.g. 0:42")
    return int(p), int(o)


def read_dead_letters(settings: Settings, stage: Stage, *, starts: dict[int, int] | None = None,
                      codec: Codec | None = None) -> Iterator[DeadLetterRecord]:
    """Every dead letter of a stage (from `starts` per partition) up to the topic's current end."""
    codec = codec or get_codec()
    topic = dlq(stage).name(settings.site_id)
    for msg in read_range(settings, topic, f"clinstream-{settings.site_id}-dlq-reader", starts=starts):
        value = msg.value() or b""
        _, ts = msg.timestamp()
        headers = tuple(_header(h) for h in msg.headers() or [])
        yield DeadLetterRecord(msg.partition() or 0, msg.offset() or 0, ts, headers, decode_envelope(codec, value),
                               value)


@dataclass(slots=True)
class ReasonSummary:
    """Dead letters of one (reason, field path)."""

    reason: str
    field_path: str | None
    records: int = 0
    sources: int = 0
    from_replays: int = 0
    redriven: int = 0
    first_failed: datetime | None = None
    last_failed: datetime | None = None
    example: str = ""


def summarise(records: Iterable[DeadLetterRecord], redriven: set[tuple[int, int]] | None = None) -> list[ReasonSummary]:
    """Counts grouped by (reason, field path), most frequent first."""
    groups: dict[tuple[str, str | None], ReasonSummary] = {}
    seen: dict[tuple[str, str | None], set[tuple[Any, ...]]] = {}
    for rec in records:
        key = (rec.reason, rec.field_path)
        s = groups.get(key)
        if s is None:
            s = groups[key] = ReasonSummary(rec.reason, rec.field_path, example=rec.position)
            seen[key] = set()
        s.records += 1
        seen[key].add(rec.source)
        s.sources = len(seen[key])
        s.from_replays += rec.replay_run is not None
        s.redriven += bool(redriven and (rec.partition, rec.offset) in redriven)
        failed = rec.envelope["failed_at"] if rec.envelope else from_ms(rec.timestamp_ms)
        if isinstance(failed, int):
            failed = from_ms(failed)
        s.first_failed = failed if s.first_failed is None or failed < s.first_failed else s.first_failed
        s.last_failed = failed if s.last_failed is None or failed > s.last_failed else s.last_failed
    return sorted(groups.values(), key=lambda g: (-g.records, g.reason))


def is_raw_zone(stage: Stage) -> bool:
    """Whether a stage's DLQ lives in the raw zone (its original bytes may hold direct identifiers)."""
    return dlq(stage).zone is Zone.RAW


def escaped(data: bytes, limit: int = 4096) -> str:
    """Printable form of bytes: ASCII as is, everything else as \\xNN; cut after `limit` bytes."""
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return text + (f"... ({len(data) - limit} more bytes)" if len(data) > limit else "")


def safe_view(rec: DeadLetterRecord, stage: Stage, *, show_payload: bool, codec: Codec | None = None) -> dict[str, Any]:
    """What `dlq show` prints: the envelope without identifiers; payload only on request."""
    env = rec.envelope or {}
    original = rec.original_value
    view: dict[str, Any] = {
        "position": rec.position,
        "stage": env.get("stage", stage.value),
        "reason": rec.reason,
        "field_path": rec.field_path,
        "source": (f"{env.get('source_topic')}:{env.get('source_partition')}:{env.get('source_offset')}"
                   if env.get("source_topic") else None),
        "content_type": env.get("content_type"),
        "failed_at": failed.isoformat() if isinstance(failed := env.get("failed_at"), datetime) else None,
        "replay_run": rec.replay_run,
        "original_value": f"{len(original)} bytes, sha256 {hashlib.sha256(original).hexdigest()[:16]}",
        "original_key": (f"{len(rec.original_key)} bytes" if rec.original_key is not None else None),
    }
    codec = codec or get_codec()
    writer = codec.writer_name(original) if original[:2] == b"\xc3\x01" else None
    view["original_schema"] = writer
    view["headers"] = [name for name, _ in rec.headers]  # values may be identifiers (ingest context)
    if show_payload:
        view["header_values"] = {name: escaped(value, 256) for name, value in rec.headers}
        view["original_value_hex"] = original.hex()
        view["original_value_escaped"] = escaped(original)
        if rec.original_key is not None:
            view["original_key_escaped"] = escaped(rec.original_key)
        if not is_raw_zone(stage) and writer is not None:  # pseudonymised zone: a decoded view is safe
            try:
                view["original_decoded"] = codec.decode(original)
            except DecodeError:
                view["original_decoded"] = None
    return view
