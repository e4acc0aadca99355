"""Per-credential token buckets of one gateway process: requests, and readings or events, per minute.

A bucket holds at most one minute's allowance and refills continuously at limit/60 per second. A request that
finds too few tokens is refused with 429 and Retry-After (the seconds until enough tokens are back); nothing of it
is produced or dead-lettered, so the client keeps its data and retries. Limits are per process: a site running N
gateway processes behind one address sets CLINSTREAM_INGEST_GATEWAY_PROCESSES=N and each process enforces 1/N
of every limit, so their sum is the site's limit (a client whose requests are spread evenly gets that limit).
Buckets live in a bounded LRU map: a credential idle long enough to be evicted starts again with a full bucket,
which it would have had anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

BUCKETS_MAX = 200_000  # credentials tracked per process
SECONDS_PER_MINUTE = 60.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of taking tokens: allowed or not, the seconds to wait, and how full the bucket was used."""

    allowed: bool
    retry_after_s: int
    usage: float  # share of the bucket used after this request (0 = untouched, 1 = empty)


class TokenBuckets:
    """Token buckets by (unit, key id), each with its own per-minute limit."""

    def __init__(self, processes: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.processes = processes
        self.clock = clock
        self._buckets: LRUCache[tuple[str, str], _Bucket] = LRUCache(maxsize=BUCKETS_MAX)

    def take(self, unit: str, key_id: str, amount: int, per_minute: int) -> Verdict:
        """Take `amount` tokens from the bucket of (unit, key id) whose limit is `per_minute` (site-wide)."""
        capacity = per_minute / self.processes
        rate = capacity / SECONDS_PER_MINUTE
        now = self.clock()
        bucket = self._buckets.get((unit, key_id))
        if bucket is None:
            bucket = self._buckets[(unit, key_id)] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if amount <= bucket.tokens:
            bucket.tokens -= amount
            return Verdict(True, 0, 1.0 - bucket.tokens / capacity)
        wait = (min(amount, capacity) - bucket.tokens) / rate
        return Verdict(False, max(1, math.ceil(wait)), 1.0)
