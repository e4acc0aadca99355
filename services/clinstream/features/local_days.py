"""Participant-local days in an IANA time zone (zoneinfo): local midnight to local midnight, 23 h or 25 h on
daylight-saving change days; vectorised over a block's samples (one zoneinfo call per local date, not per sample)."""

from __future__ import annotations

from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from clinstream.core.timeutil import MINUTE_MS

I64 = npt.NDArray[np.int64]
_UTC = ZoneInfo("UTC")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo | None:
    """The zone of an IANA name, or None if the name is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65_536)
def midnight_ms(zone_name: str, ordinal: int) -> int:
    """UTC instant (ms) of local midnight starting the local date `ordinal` (proleptic Gregorian) in the zone.

    A midnight skipped by a change at 00:00 resolves (fold=0) to the first instant of that date.
    """
    local = datetime.combine(date.fromordinal(ordinal), time(), tzinfo=ZoneInfo(zone_name))
    return int(local.astimezone(_UTC).timestamp() * 1000)


def local_ordinal(zone_name: str, t_ms: int) -> int:
    """The participant-local date (ordinal) of an instant."""
    return datetime.fromtimestamp(t_ms / 1000, tz=ZoneInfo(zone_name)).date().toordinal()


def day_starts(zone_name: str, t_ms: I64) -> I64:
    """Local-day start (UTC ms) of every instant; one zoneinfo lookup per local date the instants span."""
    if len(t_ms) == 0:
        return np.empty(0, dtype=np.int64)
    first = local_ordinal(zone_name, int(t_ms.min()))
    last = local_ordinal(zone_name, int(t_ms.max()))
    bounds = np.array([midnight_ms(zone_name, d) for d in range(first, last + 2)], dtype=np.int64)
    idx = np.searchsorted(bounds, t_ms, side="right") - 1
    return bounds[idx]  # type: ignore[no-any-return]


def day_end(zone_name: str, start_ms: int) -> int:
    """The next local midnight after a local-day start."""
    return midnight_ms(zone_name, local_ordinal(zone_name, start_ms) + 1)


def offset_minutes(zone_name: str, t_ms: int) -> int:
    """The zone's UTC offset at an instant, in minutes."""
    offset = datetime.fromtimestamp(t_ms / 1000, tz=ZoneInfo(zone_name)).utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


def day_minutes(zone_name: str, start_ms: int) -> int:
    """Length of the local day starting at `start_ms`, in minutes (1380, 1440 or 1500 around DST changes)."""
    return (day_end(zone_name, start_ms) - start_ms) // MINUTE_MS

