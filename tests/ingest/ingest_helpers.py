"""Helpers of the ingest tests: request builders, topic reads with a real consumer, odd TCP servers."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from clinstream.core.config import Settings
from clinstream_devtools.simulate.telemetry import iso_ms
from topic_read import read_messages

JSON = {"Content-Type": "application/json"}
MIN = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **JSON}


def hr_block(participant: str = "P-000001", *, start_ms: int | None = None, n: int = 60, **overrides: Any
             ) -> dict[str, Any]:
    """A valid heart-rate block of `n` one-second samples that ended a few minutes ago."""
    start = start_ms if start_ms is not None else now_ms() - 10 * MIN
    block: dict[str, Any] = {
        "block_id": str(uuid.uuid4()), "participant_id": participant, "sequence": 1, "start": iso_ms(start),
        "utc_offset_minutes": 60, "schema": "heart-rate", "unit": "beats/min",
        "offsets_ms": [i * 1000 for i in range(n)], "values": [60.0 + i % 7 for i in range(n)],
    }
    block.update(overrides)
    return block


def body_temperature_block(participant: str = "P-000001", *, n: int = 4, **overrides: Any) -> dict[str, Any]:
    """A valid wrist temperature block of `n` one-minute samples that ended a few minutes ago."""
    block = hr_block(participant, n=n, schema="body-temperature", unit="Cel", location="wrist",
                     offsets_ms=[i * MIN for i in range(n)], values=[33.0 + i / 10 for i in range(n)])
    block.update(overrides)
    return block


def body(*blocks: dict[str, Any], compress: bool = False) -> bytes:
    data = orjson.dumps({"blocks": list(blocks)})
    return gzip.compress(data) if compress else data


def assay_event(participant: str = "P-000001", **payload: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "participant_id": participant,
            "occurred_at": iso_ms(now_ms() - 60 * MIN),
            "payload": {"kind": "assay", "sample_id": "SMP-1-01", "analyte": "CRP", "loinc_code": "1988-5",
                        "value": 3.2, "unit": "mg/L", **payload}}


@dataclass(frozen=True)
class Rec:
    """One record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def read_topic(settings: Settings, topic: str, timeout_s: float = 20.0) -> list[Rec]:
    """Every record of a topic up to its current high watermarks (a real consumer, no group commits)."""
    return [Rec(m.partition(), m.offset(), m.key(), m.value() or b"",
                tuple((k, v or b"") for k, v in (m.headers() or [])))
            for m in read_messages(settings, topic, timeout_s)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def blackhole_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a broker that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    running = True

    def accept() -> None:
        while running:
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        running = False
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()
