"""The simulators as HTTP clients of a real gateway (uvicorn on a local port, real broker and DB)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import orjson
import pytest
import uvicorn

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY
from clinstream.ingest.app import create_app
from clinstream.ingest.config import IngestSettings
from clinstream_devtools.simulate import client as simulate_client
from clinstream_devtools.simulate.client import GatewayClient, generation_windows, run_blocks, run_devices, run_lims
from clinstream_devtools.simulate.lims import LimsOptions
from clinstream_devtools.simulate.profiles import make_cohort
from clinstream_devtools.simulate.provision import device_tokens, lims_token
from clinstream_devtools.simulate.telemetry import device_blocks
from condition_wait import wait_until

HOUR = 3_600_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(settings: Settings, limits: IngestSettings | None = None) -> Iterator[str]:
    """A real uvicorn server running the gateway of a test site; yields its URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, limits), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 20, "the gateway to start", step_s=0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def gateway_url(kafka_site: Settings, db_site: Settings) -> Iterator[str]:
    """A real uvicorn server running the gateway of a fresh test site."""
    with _serve(kafka_site) as url:
        yield url


def _topic_values(settings: Settings, topic: str) -> list[dict]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sim-test", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
        out: list[dict] = []

        def all_read() -> bool:
            out.extend(get_codec().decode(m.value()) for m in c.consume(10_000, 0.5) if not m.error())
            return len(out) >= sum(ends.values())

        wait_until(all_read, 20, f"every record of {topic}", step_s=0.0)
        return out
    finally:
        c.close()


@pytest.mark.integration
def test_simulated_devices_and_lims_deliver_through_the_gateway(gateway_url: str, kafka_site: Settings) -> None:
    cohort = make_cohort(5, 2)
    now = int(time.time() * 1000)
    start, end = now - 3 * HOUR, now - 60_000
    tokens = device_tokens(kafka_site, cohort)
    key = lims_token(kafka_site)

    async def main() -> tuple:
        client = GatewayClient(gateway_url)
        try:
            devices = await run_devices(client, cohort, tokens, start, end, seed=5, batch_blocks=20)
            lims, events = await run_lims(client, cohort, key, now - 20 * 24 * HOUR, end, seed=5,
                                          options=LimsOptions(bad_fraction=0.1), withdrawing=frozenset({2}))
            return devices, lims, events
        finally:
            await client.close()

    devices, lims, events = asyncio.run(main())
    expected = [b for p in cohort for b in run_blocks(p, start, end, seed=5)]  # by UTC day, as sent
    assert devices.failed_requests == 0 and devices.rejected == 0
    assert devices.accepted == len(expected)  # every block, resends included, was accepted
    on_topic = Counter(str(r["block_id"]) for r in _topic_values(kafka_site, RAW_TELEMETRY.name(kafka_site.site_id)))
    assert on_topic == Counter(b.block["block_id"] for b in expected)

    valid = [e for e in events if e.valid]
    assert lims.failed_requests == 0 and lims.accepted == len(valid) and lims.rejected == len(events) - len(valid)
    biobank = _topic_values(kafka_site, RAW_BIOBANK.name(kafka_site.site_id))
    assert sorted(str(r["event_id"]) for r in biobank) == sorted(e.event["event_id"] for e in valid)
    actions = [r["payload"][1]["action"] for r in biobank if r["payload"][0].endswith("ConsentEvent")]
    assert sorted(actions) == ["GRANT", "GRANT", "WITHDRAW"]


class VirtualClock:
    """The simulator's clock, injected: time.monotonic() reads it, asyncio.sleep() advances it (no real waiting)."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += max(seconds, 0.0)
        await asyncio.sleep(0)


def test_speedup_paces_the_devices_by_simulated_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 900x, each block leaves when simulated time (start + 900 x elapsed) reaches its due time, not before,
    and the run lasts 1/900 of the simulated span it covers, on the (virtual) clock."""
    clock = VirtualClock()
    monkeypatch.setattr(simulate_client, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(simulate_client, "asyncio", SimpleNamespace(sleep=clock.sleep, Semaphore=asyncio.Semaphore,
                                                                    gather=asyncio.gather))
    speedup, start = 900.0, 1_767_225_600_000
    end = start + 30 * 60_000
    began = clock.now_s
    sent: list[tuple[float, str]] = []  # (simulated ms when posted, block id)

    def handler(request: httpx.Request) -> httpx.Response:
        blocks = orjson.loads(gzip.decompress(request.content))["blocks"]
        at = start + (clock.now_s - began) * 1000 * speedup
        sent.extend((at, b["block_id"]) for b in blocks)
        return httpx.Response(202, json={"accepted": [b["block_id"] for b in blocks], "rejected": [],
                                         "readings_accepted": 0})

    cohort = make_cohort(6, 1)
    tokens = {p.device_id: "csd_x.y" for p in cohort}

    async def main() -> None:
        client = GatewayClient("http://gateway.invalid", transport=httpx.MockTransport(handler))
        try:
            stats = await run_devices(client, cohort, tokens, start, end, seed=6, speedup=speedup)
            assert stats.failed_requests == 0 and stats.accepted == len(sent)
        finally:
            await client.close()

    asyncio.run(main())
    due = {b.block["block_id"]: b.due_ms for p in cohort for b in device_blocks(p, start, end, seed=6)}
    assert sorted(block_id for _, block_id in sent) == sorted(due)
    in_window = [(at, due[b]) for at, b in sent if due[b] < end]  # later ones are late uploads, sent at the end
    assert in_window and all(at >= due_ms for at, due_ms in in_window), "a block left before it was due"
    waited_for: dict[float, int] = {}  # each post goes at the simulated moment its first block fell due
    for at, due_ms in in_window:
        waited_for.setdefault(at, due_ms)
    assert all(at - due_ms < 1.0 for at, due_ms in waited_for.items())
    last_due = max(due_ms for _, due_ms in in_window)
    assert clock.now_s - began == pytest.approx((last_due - start) / 1000 / speedup)  # 1.98 s for 29.7 min


@pytest.mark.parametrize(("status", "error"), [(503, "broker_unavailable"), (429, "rate_limited")])
def test_client_resends_after_503_or_429_honouring_retry_after(status: int, error: str) -> None:
    calls: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        if len(calls) < 3:
            return httpx.Response(status, headers={"Retry-After": "0"}, json={"error": error})
        return httpx.Response(202, json={"accepted": ["x"], "rejected": [], "readings_accepted": 3})

    async def main() -> None:
        client = GatewayClient("http://gateway.invalid", transport=httpx.MockTransport(handler))
        try:
            result = await client.post("/v1/telemetry", "csd_x.y", {"blocks": [1]})
        finally:
            await client.close()
        assert result.status == 202 and result.attempts == 3

    asyncio.run(main())
    assert len(set(calls)) == 1  # the same bytes every time
    told = SimpleNamespace(outcome=SimpleNamespace(exception=lambda: simulate_client._Retryable(status, 37.0)))
    assert simulate_client._wait(told) == 37.0  # type: ignore[arg-type]  # Retry-After, not exponential back-off


@pytest.mark.integration
def test_client_gets_past_a_real_gateway_limit(kafka_site: Settings, db_site: Settings) -> None:
    """A device over its request limit (60 a minute: a burst of 60, then one a second) is answered 429 with
    Retry-After; the client waits and sends the same request again, which is accepted."""
    cohort = make_cohort(5, 1)
    token = device_tokens(kafka_site, cohort)[cohort[0].device_id]
    now = int(time.time() * 1000)
    blocks = [b.block for b in device_blocks(cohort[0], now - 2 * HOUR, now - HOUR, seed=5)][:1]
    assert blocks

    async def main(url: str) -> tuple[list[int], simulate_client.PostResult]:
        client = GatewayClient(url, max_retry_s=30.0)
        try:
            burst = [(await client.post("/v1/telemetry", token, {"blocks": []})).status for _ in range(60)]
            return burst, await client.post("/v1/telemetry", token, {"blocks": blocks})
        finally:
            await client.close()

    with _serve(kafka_site, IngestSettings(max_requests_per_min=60)) as url:
        burst, result = asyncio.run(main(url))
        metrics = httpx.get(f"{url}/metrics").text
    assert set(burst) == {422}  # each took one request from the bucket
    assert result.status == 202 and result.attempts >= 2, result
    assert 'clinstream_gateway_rate_limited_total{unit="requests"}' in metrics


def test_run_blocks_are_the_blocks_the_devices_send_across_midnight() -> None:
    """The devices' blocks are generated per UTC day (a window's ids and sequences depend on its start): a run that
    crosses midnight sends exactly `run_blocks`, which differ from one window's `device_blocks`."""
    midnight = 1_767_225_600_000
    start, end = midnight - 3 * HOUR, midnight + HOUR
    assert generation_windows(start, end) == [(start, midnight), (midnight, end)]
    cohort = make_cohort(2, 1)
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        blocks = orjson.loads(gzip.decompress(request.content))["blocks"]
        sent.extend(b["block_id"] for b in blocks)
        return httpx.Response(202, json={"accepted": [b["block_id"] for b in blocks], "rejected": [],
                                         "readings_accepted": 0})

    async def main() -> None:
        client = GatewayClient("http://gateway.invalid", transport=httpx.MockTransport(handler))
        try:
            await run_devices(client, cohort, {p.device_id: "csd_x.y" for p in cohort}, start, end, seed=3)
        finally:
            await client.close()

    asyncio.run(main())
    expected = [b.block["block_id"] for p in cohort for b in run_blocks(p, start, end, seed=3)]
    assert sorted(sent) == sorted(expected)
    one_window = [b.block["block_id"] for p in cohort for b in device_blocks(p, start, end, seed=3)]
    assert sorted(expected) != sorted(one_window)
