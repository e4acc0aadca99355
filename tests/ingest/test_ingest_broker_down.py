"""Never a 202 without the broker: an unreachable or silent broker gives 503 + Retry-After within the deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import assay_event, auth, blackhole_server, body, free_port, hr_block

from clinstream.ingest.app import create_app
from clinstream.ingest.config import IngestSettings

pytestmark = pytest.mark.integration
DEADLINE_S = 2.0


def _gateway(ingest_site, bootstrap: str) -> TestClient:
    """The gateway of the test site (real DB, so credentials work) pointed at another broker address."""
    settings = ingest_site.settings.model_copy(update={"kafka_bootstrap": bootstrap})
    limits = IngestSettings(deadline_s=DEADLINE_S, retry_after_s=3, broker_probe_s=0.5)
    return TestClient(create_app(settings, limits))


@pytest.fixture(scope="module")
def closed_port_gateway(ingest_site) -> Iterator[TestClient]:
    with _gateway(ingest_site, f"127.0.0.1:{free_port()}") as client:
        yield client


def test_unreachable_broker_gives_503_with_retry_after_within_the_deadline(closed_port_gateway: TestClient,
                                                                             ingest_site) -> None:
    for _ in range(3):  # the first waits (at most) the deadline; later ones fail fast once the broker is known down
        started = time.monotonic()
        r = closed_port_gateway.post("/v1/telemetry", content=body(hr_block()),
                                     headers=auth(ingest_site.device_token))
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "3" and r.json()["error"] == "broker_unavailable"
        assert elapsed < DEADLINE_S + 1.0
    r = closed_port_gateway.post("/v1/biobank/events", content=orjson.dumps({"events": [assay_event()]}),
                                 headers=auth(ingest_site.lims_token))
    assert r.status_code == 503 and "Retry-After" in r.headers
    ready = closed_port_gateway.get("/readyz")
    assert ready.status_code == 503 and ready.json()["broker"] is False


def test_client_mistakes_stay_4xx_while_the_broker_is_down(closed_port_gateway: TestClient, ingest_site) -> None:
    r = closed_port_gateway.post("/v1/telemetry", content=body(hr_block(unit="bpm")),
                                 headers=auth(ingest_site.device_token))
    assert r.status_code == 422
    assert closed_port_gateway.post("/v1/telemetry", content=b"{",
                                    headers=auth(ingest_site.device_token)).status_code == 400
    assert closed_port_gateway.post("/v1/telemetry", content=body(hr_block("P-000002")),
                                    headers=auth(ingest_site.device_token)).status_code == 403


def test_silent_broker_gives_503_within_the_deadline(ingest_site) -> None:
    with blackhole_server() as port, _gateway(ingest_site, f"127.0.0.1:{port}") as client:
        started = time.monotonic()
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"
        assert time.monotonic() - started < DEADLINE_S + 1.0


def test_recovery_after_the_broker_returns(ingest_site) -> None:
    """A gateway that saw the broker down accepts again once it is back (here: reachable from the start)."""
    with _gateway(ingest_site, ingest_site.settings.kafka_bootstrap) as client:
        gw = client.app.state.gateway  # type: ignore[attr-defined]
        gw.producer._up.clear()  # as after a missed deadline
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503  # fails fast while known down
        deadline = time.monotonic() + 10
        while not gw.producer.broker_up:  # the watcher probes and notices the broker
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 202


def test_unreachable_credential_store_gives_503_not_401(ingest_site) -> None:
    settings = ingest_site.settings.model_copy(
        update={"database_url": f"postgresql://clinstream@127.0.0.1:{free_port()}/clinstream"})
    with TestClient(create_app(settings, IngestSettings(deadline_s=DEADLINE_S, retry_after_s=3))) as client:
        started = time.monotonic()
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503 and r.json()["error"] == "database_unavailable" and "Retry-After" in r.headers
        assert time.monotonic() - started < DEADLINE_S + 1.0
        assert client.get("/readyz").json()["database"] is False


def test_no_202_while_the_real_broker_is_stopped(ingest_site) -> None:
    """Stop the real local broker: every answer is 503 + Retry-After, never 202; after a restart, 202 again."""
    from clinstream.stack.kafka import kafka_is_up, start_kafka, stop_kafka

    settings = ingest_site.settings
    with _gateway(ingest_site, settings.kafka_bootstrap) as client:
        assert client.post("/v1/telemetry", content=body(hr_block()),
                           headers=auth(ingest_site.device_token)).status_code == 202
        stop_kafka(settings)
        try:
            assert not kafka_is_up(settings, timeout_s=1.0)  # the fault really happened: the port is closed
            codes = []
            for _ in range(3):
                started = time.monotonic()
                r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
                codes.append(r.status_code)
                assert r.status_code == 503 and r.headers["Retry-After"] == "3", r.text
                assert time.monotonic() - started < DEADLINE_S + 1.5
            assert 202 not in codes
        finally:
            start_kafka(settings)
        gw = client.app.state.gateway  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while True:
            r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
            if r.status_code == 202:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert gw.producer.broker_up
