"""Event-time window kinds and their vectorised start computation (UTC-aligned and participant-local days)."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import numpy.typing as npt

from clinstream.core.timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from clinstream.features.config import FeatureSettings

I64 = npt.NDArray[np.int64]


class WindowKind(StrEnum):
    """The window kinds of the FeatureRecord schema (WindowKind enum)."""

    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    LOCAL_DAY = "LOCAL_DAY"


ALL_KINDS: tuple[WindowKind, ...] = (WindowKind.MINUTE, WindowKind.HOUR, WindowKind.DAY, WindowKind.LOCAL_DAY)
DAY_KINDS: tuple[WindowKind, ...] = (WindowKind.DAY, WindowKind.LOCAL_DAY)

LENGTH_MS: dict[WindowKind, int] = {
    WindowKind.MINUTE: MINUTE_MS, WindowKind.HOUR: HOUR_MS, WindowKind.DAY: DAY_MS, WindowKind.LOCAL_DAY: DAY_MS,
}


def window_starts(kind: WindowKind, t_ms: I64, offset_ms: I64 | int) -> I64:
    """Window start (UTC instant, ms) of every event time; LOCAL_DAY starts at the participant's local midnight.

    `offset_ms` is the UTC offset of each event's block in ms (ignored by the UTC-aligned kinds).
    """
    length = LENGTH_MS[kind]
    if kind is WindowKind.LOCAL_DAY:
        local = t_ms + offset_ms
        return (local // length) * length - offset_ms  # type: ignore[no-any-return]
    return (t_ms // length) * length


def window_start_of(kind: WindowKind, t_ms: int, offset_ms: int) -> int:
    """Scalar form of `window_starts`."""
    length = LENGTH_MS[kind]
    if kind is WindowKind.LOCAL_DAY:
        return ((t_ms + offset_ms) // length) * length - offset_ms
    return (t_ms // length) * length


def horizon_ms(kind: WindowKind, settings: FeatureSettings) -> int:
    """How long after its end a window of this kind still accepts data."""
    minutes = {
        WindowKind.MINUTE: settings.horizon_minute_min,
        WindowKind.HOUR: settings.horizon_hour_min,
        WindowKind.DAY: settings.horizon_day_min,
        WindowKind.LOCAL_DAY: settings.horizon_day_min,
    }[kind]
    return minutes * MINUTE_MS


def deadlines(settings: FeatureSettings) -> dict[WindowKind, int]:
    """Window length plus horizon per kind: a window starting at s is final once the watermark reaches s + this."""
    return {kind: LENGTH_MS[kind] + horizon_ms(kind, settings) for kind in ALL_KINDS}
