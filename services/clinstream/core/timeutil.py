"""Time helpers: UTC epoch milliseconds everywhere, datetimes only at the edges."""

from __future__ import annotations

import time
from datetime import UTC, datetime

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def now_ms() -> int:
    """Wall-clock UTC time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_ms(value: datetime | int) -> int:
    """Epoch milliseconds of an aware datetime (or pass an int through)."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime: clinstream needs UTC-aware instants")
    return int(value.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Aware UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
