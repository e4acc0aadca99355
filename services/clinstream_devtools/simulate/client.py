"""Simulated devices and LIMS talking to the gateway over HTTP (httpx), at a chosen speed-up of simulated time.

Like real clients they batch, gzip, resend unchanged after a 503 or a 429 (over a per-credential limit), both
honouring Retry-After, or after a dropped connection, and never resend a request refused with another 4xx.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential

from clinstream.core.timeutil import DAY_MS
from clinstream_devtools.simulate.lims import LimsOptions, SimEvent, lims_events
from clinstream_devtools.simulate.profiles import Participant
from clinstream_devtools.simulate.telemetry import DeviceOptions, SimBlock, batch_payloads, device_blocks

Progress = Callable[[int], None]  # called with the simulated time reached (epoch ms)
Pace = Callable[[int], Awaitable[None]]  # awaited with the simulated time reached (epoch ms)
# Over a per-credential limit / unavailable: the gateway kept nothing, so the same bytes are sent again.
RETRYABLE_STATUSES: Final = frozenset({429, 503})
MAX_RETRY_AFTER_S: Final = 60.0  # a longer Retry-After is capped (a per-minute limit never asks for more)


class _Retryable(Exception):
    def __init__(self, status: int, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after_s = retry_after_s


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
        return min(exc.retry_after_s, MAX_RETRY_AFTER_S)
    return float(wait_exponential(multiplier=0.2, max=5.0)(state))


@dataclass
class PostResult:
    """The gateway's final answer to one request (after retries)."""

    status: int
    body: dict[str, Any]
    attempts: int


class GatewayClient:
    """A minimal gateway client: JSON (optionally gzip) POSTs with retries of transient failures."""

    def __init__(self, base_url: str, *, use_gzip: bool = True, timeout_s: float = 30.0, max_retry_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)
        self.use_gzip = use_gzip
        self.max_retry_s = max_retry_s

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def healthy(self) -> bool:
        """Whether the gateway answers its liveness probe."""
        try:
            return (await self.http.get("/healthz", timeout=5.0)).status_code == 200
        except httpx.TransportError:
            return False

    async def post(self, path: str, token: str, body: Mapping[str, Any]) -> PostResult:
        """POST a JSON body; 429, 503 and connection failures are retried (same bytes), anything else returned."""
        content = orjson.dumps(body)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if self.use_gzip:
            content = gzip.compress(content, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        attempts = 0
        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type((_Retryable, httpx.TransportError)),
                                               stop=stop_after_delay(self.max_retry_s), wait=_wait, reraise=True):
                with attempt:
                    attempts += 1
                    response = await self.http.post(path, content=content, headers=headers)
                    if response.status_code in RETRYABLE_STATUSES:
                        retry_after = response.headers.get("Retry-After")
                        raise _Retryable(response.status_code,
                                         float(retry_after) if retry_after and retry_after.isdigit() else None)
        except _Retryable as exc:
            return PostResult(exc.status, {}, attempts)
        except httpx.TransportError:
            return PostResult(0, {}, attempts)  # never reached the gateway
        try:
            parsed = response.json()
        except ValueError:
            parsed = {}
        return PostResult(response.status_code, parsed if isinstance(parsed, dict) else {}, attempts)


@dataclass
class RunStats:
    """Totals of one simulator run."""

    requests: int = 0
    retried_requests: int = 0
    failed_requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    readings: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class _Clock:
    """Simulated time: start + speedup x elapsed wall time (speedup <= 0: no waiting at all)."""

    def __init__(self, start_ms: int, speedup: float) -> None:
        self.start_ms = start_ms
        self.speedup = speedup
        self.t0 = time.monotonic()

    def now(self) -> float:
        if self.speedup <= 0:
            return float("inf")
        return self.start_ms + (time.monotonic() - self.t0) * 1000 * self.speedup

    async def until(self, sim_ms: int) -> None:
        while (ahead := sim_ms - self.now()) > 0:
            await asyncio.sleep(min(ahead / 1000 / self.speedup, 1.0))


async def _send_all(jobs: Sequence[Callable[[], Any]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Any]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(run(job) for job in jobs))


def _count(stats: RunStats, result: PostResult) -> None:
    stats.requests += 1
    stats.statuses[result.status] = stats.statuses.get(result.status, 0) + 1
    if result.attempts > 1:
        stats.retried_requests += 1
    if result.status not in (202, 422):
        stats.failed_requests += 1
        return
    stats.accepted += len(result.body.get("accepted", []))
    stats.duplicates += len(result.body.get("duplicates", []))
    stats.rejected += len(result.body.get("rejected", []))
    stats.readings += int(result.body.get("readings_accepted", 0))


def generation_windows(start_ms: int, end_ms: int, step_days: int = 1) -> list[tuple[int, int]]:
    """The windows `run_devices` generates blocks for, in order: from `start_ms` to the end of the UTC day
    `step_days` - 1 days later, and so on up to `end_ms`. A block's id and sequence depend on its window."""
    windows: list[tuple[int, int]] = []
    lo = start_ms
    while lo < end_ms:
        hi = min(end_ms, (lo // DAY_MS + step_days) * DAY_MS)
        windows.append((lo, hi))
        lo = hi
    return windows


def run_blocks(p: Participant, start_ms: int, end_ms: int, *, seed: int, options: DeviceOptions | None = None,
               step_days: int = 1) -> list[SimBlock]:
    """Every block `run_devices` sends for one participant's device over [start_ms, end_ms), resends included."""
    blocks: list[SimBlock] = []
    sequence = 0
    for lo, hi in generation_windows(start_ms, end_ms, step_days):
        part = device_blocks(p, lo, hi, seed=seed, options=options, first_sequence=sequence)
        sequence += len({b.block["block_id"] for b in part})
        blocks.extend(part)
    return blocks


async def run_devices(client: GatewayClient, cohort: Sequence[Participant], tokens: Mapping[str, str], start_ms: int,
                      end_ms: int, *, seed: int, options: DeviceOptions | None = None, speedup: float = 0.0,
                      batch_blocks: int = 100, concurrency: int = 4, progress: Progress | None = None,
                      step_days: int = 1, pace: Pace | None = None) -> RunStats:
    """Simulate the cohort's devices over [start_ms, end_ms): each block is sent once it is due.

    Blocks are generated `step_days` UTC days ahead (each generation also models the day before it, for blocks
    that cross midnight, so longer steps generate faster but hold more blocks in memory); they are still sent
    one UTC day at a time, in due order. `pace`, if given, is awaited with the simulated time reached after each
    day's blocks were answered (back-pressure, e.g. to wait until the receiving pipeline has caught up).
    """
    if step_days < 1:
        raise ValueError("step_days must be at least 1")
    stats = RunStats()
    clock = _Clock(start_ms, speedup)
    sequences = {p.device_id: 0 for p in cohort}
    heap: list[tuple[int, int, SimBlock]] = []
    counter = 0

    async def send(device_id: str, body: dict[str, Any]) -> None:
        _count(stats, await client.post("/v1/telemetry", tokens[device_id], body))

    windows = iter(generation_windows(start_ms, end_ms, step_days))
    day_lo = generated = start_ms
    while day_lo < end_ms:
        day_hi = min(end_ms, (day_lo // DAY_MS + 1) * DAY_MS)
        if generated < day_hi:
            _, gen_hi = next(windows)
            for p in cohort:
                blocks = device_blocks(p, generated, gen_hi, seed=seed, options=options,
                                       first_sequence=sequences[p.device_id])
                sequences[p.device_id] += len({b.block["block_id"] for b in blocks})
                for b in blocks:
                    heapq.heappush(heap, (b.due_ms, counter, b))
                    counter += 1
            generated = gen_hi
        last = day_hi >= end_ms

        def ready(due: int, now: float, last: bool = last, day_hi: int = day_hi) -> bool:
            # due now; at the very end, blocks due after the window (late uploads) go at once
            return (last or due < day_hi) and (due <= now or (last and due >= end_ms))

        while heap and (last or heap[0][0] < day_hi):
            await clock.until(min(heap[0][0], end_ms))
            now = clock.now()
            batch: list[SimBlock] = []
            while heap and ready(heap[0][0], now):
                batch.append(heapq.heappop(heap)[2])
            jobs = [lambda d=d, b=b: send(d, b) for d, b in batch_payloads(batch, batch_blocks)]
            await _send_all(jobs, concurrency)
            if progress and batch:
                progress(min(batch[-1].due_ms, end_ms))
        if pace is not None:
            await pace(day_hi)
        day_lo = day_hi
    return stats


async def run_lims(client: GatewayClient, cohort: Sequence[Participant], token: str, start_ms: int, end_ms: int, *,
                   seed: int, options: LimsOptions | None = None, withdrawing: frozenset[int] = frozenset(),
                   speedup: float = 0.0, batch_events: int = 200,
                   progress: Progress | None = None) -> tuple[RunStats, list[SimEvent]]:
    """Simulate one LIMS for the cohort over [start_ms, end_ms); returns the stats and every event sent.

    Participants whose index is in `withdrawing` withdraw consent at the end of the window.
    """
    stats = RunStats()
    clock = _Clock(start_ms, speedup)
    base = options or LimsOptions()
    events = sorted((e for p in cohort for e in lims_events(
        p, start_ms, end_ms, seed=seed, options=replace(base, withdraw=base.withdraw or p.index in withdrawing))),
        key=lambda e: e.due_ms)
    i = 0
    while i < len(events):
        await clock.until(min(events[i].due_ms, end_ms))
        now = clock.now()
        j = i + 1
        while j < len(events) and j - i < batch_events and (events[j].due_ms <= now or events[j].due_ms > end_ms):
            j += 1
        _count(stats, await client.post("/v1/biobank/events", token, {"events": [e.event for e in events[i:j]]}))
        if progress:
            progress(min(events[j - 1].due_ms, end_ms))
        i = j
    return stats, events
