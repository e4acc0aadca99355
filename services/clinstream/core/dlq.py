"""Builds dead-letter records: the original bytes, the stage, the reason and where they came from."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from clinstream.core.avro import Codec
from clinstream.core.constants import DLQ_HEADER_REASON, DLQ_HEADER_STAGE
from clinstream.core.kafka import Message
from clinstream.core.topics import DLQ_SCHEMA, Stage


@dataclass(frozen=True)
class Rejection:
    """Why one input was rejected: a reason and, where known, the path of the offending field."""

    reason: str
    field_path: str | None = None


def dead_letter(codec: Codec, *, site_id: str, stage: Stage, rejection: Rejection, original_value: bytes,
                original_key: bytes | None = None, content_type: str | None = None,
                source_topic: str | None = None, source_partition: int | None = None,
                source_offset: int | None = None, now_ms: int | None = None,
                extra_headers: Sequence[tuple[str, bytes]] = ()) -> Message:
    """One DLQ message (key, value, headers) for the stage's dead-letter topic.

    `extra_headers` follow the stage and reason headers (e.g. the ingest stage's re-drive context).
    """
    value = codec.encode(DLQ_SCHEMA, {
        "site_id": site_id,
        "stage": stage.value,
        "reason": rejection.reason,
        "field_path": rejection.field_path,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "content_type": content_type,
        "original_key": original_key,
        "original_value": original_value,
        "failed_at": now_ms if now_ms is not None else int(time.time() * 1000),
    })
    headers = [(DLQ_HEADER_STAGE, stage.value.encode()), (DLQ_HEADER_REASON, rejection.reason.encode()[:512]),
               *extra_headers]
    return (original_key, value, headers)
