"""The simulators as HTTP clients of a real gateway (uvicorn on a local port, real broker and DB)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY
from clinstream.ingest.app import create_app
from clinstream.simulate.client import GatewayClient, run_devices, run_lims
from clinstream.simulate.lims import LimsOptions
from clinstream.simulate.profiles import make_cohort
from clinstream.simulate.provision import device_tokens, lims_token
from clinstream.simulate.telemetry import device_blocks

HOUR = 3_600_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_url(kafka_site: Settings, db_site: Settings) -> Iterator[str]:
    """A real uvicorn server running the gateway of a fresh test site."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(kafka_site), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


def _topic_values(settings: Settings, topic: str) -> list[dict]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sim-test", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
        out: list[dict] = []
        deadline = time.monotonic() + 20
        while len(out) < sum(ends.values()):
            assert time.monotonic() < deadline
            out.extend(get_codec().decode(m.value()) for m in c.consume(10_000, 0.5) if not m.error())
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
    expected = [b for p in cohort for b in device_blocks(p, start, end, seed=5)]
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


@pytest.mark.integration
def test_speedup_paces_the_devices_by_simulated_time(gateway_url: str, kafka_site: Settings) -> None:
    cohort = make_cohort(6, 1)
    now = int(time.time() * 1000)
    start, end = now - 31 * 60_000, now - 60_000  # 30 simulated minutes at 900x: about 2 s
    tokens = device_tokens(kafka_site, cohort)

    async def main() -> float:
        client = GatewayClient(gateway_url)
        began = time.monotonic()
        try:
            stats = await run_devices(client, cohort, tokens, start, end, seed=6, speedup=900.0)
            assert stats.failed_requests == 0 and stats.accepted > 0
            return time.monotonic() - began
        finally:
            await client.close()

    elapsed = asyncio.run(main())
    assert 1.0 < elapsed < 6.0


def test_client_resends_after_503_honouring_retry_after() -> None:
    calls: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "broker_unavailable"})
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
