"""Crash points of the stream host: a fault test makes a worker die at a named checkpoint step (env vars only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from clinstream.core.constants import CRASH_POINT_ENV, CRASH_TIMES_ENV, CRASH_WHEN_ENV, EXIT_CRASH_POINT

log = logging.getLogger("clinstream.core.crash_points")


class CrashPoint(StrEnum):
    """The steps of the host's checkpoint after which a worker can be made to die."""

    AFTER_PROCESS = "after-process"  # state changed in memory; nothing produced
    AFTER_OUTPUTS = "after-outputs"  # outputs acknowledged; state changelog not produced
    AFTER_STATE_BEFORE_ACK = "after-state-before-ack"  # state changelog acknowledged; input offsets not committed


class CrashPoints:
    """Dies (exit 71, no flush, no commit) at the configured point; a no-op unless the environment enables it."""

    def __init__(self, state_dir: Path, environ: Mapping[str, str] = os.environ, stage: str | None = None) -> None:
        raw = environ.get(CRASH_POINT_ENV, "")
        when = environ.get(CRASH_WHEN_ENV, "")  # "counter" or "stage:counter" (only that stage's workers die)
        only, _, counter = when.rpartition(":")
        self.point = CrashPoint(raw) if raw and (not only or only == stage) else None
        self.when = counter
        self.times = int(environ.get(CRASH_TIMES_ENV, "1"))
        self._fired_file = state_dir / f"crash-{raw}.fired"

    def _fired(self) -> int:
        return int(self._fired_file.read_text()) if self._fired_file.exists() else 0

    def should_fire(self, point: CrashPoint, counters: Mapping[str, int]) -> bool:
        """Whether a batch with these counters stops the worker at this point (and records that it did)."""
        if self.point is not point or (self.when and not counters.get(self.when)):
            return False
        fired = self._fired()
        if fired >= self.times:
            return False
        self._fired_file.write_text(str(fired + 1))
        return True

    def reached(self, point: CrashPoint, counters: Mapping[str, int]) -> None:
        """Exit the process here if the environment asks for it."""
        if self.should_fire(point, counters):
            log.critical("crash point %s reached; exiting", point.value)
            logging.shutdown()
            os._exit(EXIT_CRASH_POINT)
