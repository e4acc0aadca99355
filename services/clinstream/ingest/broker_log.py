"""Folds librdkafka's warning and error lines during a broker outage into one "broker unreachable since" line.

librdkafka logs every failed connection attempt (about 20 lines a second at the gateway once a connected broker
stops). `BrokerLogSummary` is the logger a producer hands to librdkafka (anything with a `log` method): lines below
WARNING pass to the real logger unchanged; of the others, the first of an outage and then at most one per interval
pass as a summary with the outage's start and the number of lines folded into it, the rest are only counted.
`recovered()` ends the outage with one line and the total count. One summary per producer: two gateways in one
process do not share (or double) their counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from clinstream.core.constants import INGEST_BROKER_LOG_EVERY_S


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BrokerLogSummary:
    """A logger for librdkafka that rate-limits WARNING+ lines into periodic summaries on `target`."""

    def __init__(self, target: logging.Logger, every_s: float = INGEST_BROKER_LOG_EVERY_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self.since: float | None = None  # start of the outage (wall clock, for the log line)
        self.total = 0  # lines folded since the outage began
        self._unreported = 0
        self._last_line: float | None = None

    def log(self, level: int, msg: str, *args: object) -> None:
        """librdkafka's log call: a summary at most once per interval for WARNING+, the line itself otherwise."""
        if level < logging.WARNING:
            self.target.log(level, msg, *args)
            return
        now = self.clock()
        with self._lock:
            if self.since is None:
                self.since = now
            self.total += 1
            self._unreported += 1
            if self._last_line is not None and now - self._last_line < self.every_s:
                return
            since, unreported, total = self.since, self._unreported, self.total
            self._last_line = now
            self._unreported = 0
        latest = (msg % args if args else msg)[:200]
        self.target.log(level, "broker unreachable since %s: %d librdkafka error line(s) since the last report, "
                        "%d in all (latest: %s)", _utc(since), unreported, total, latest)

    def recovered(self) -> None:
        """The broker answers again: one closing line if an outage was being summarised."""
        with self._lock:
            if self.since is None:
                return
            since, total = self.since, self.total
            self.since, self.total, self._unreported, self._last_line = None, 0, 0, None
        self.target.warning("broker reachable again (unreachable since %s; %d librdkafka error line(s) folded)",
                    _utc(since), total)
