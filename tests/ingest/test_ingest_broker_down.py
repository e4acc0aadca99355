"""Never a 202 without the broker: an unreachable or silent broker gives 503 + Retry-After within the deadline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import assay_event, auth, blackhole_server, body, free_port, hr_block

from clinstream.ingest.app import create_app
from clinstream.ingest.config import IngestSettings
from clinstream_devtools.stack.common import stack_lock
from clinstream_devtools.stack.kafka import broker_address, kafka_is_up, start_kafka, stop_kafka
from condition_wait import wait_until
from ports import port_refuses

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
        r = closed_port_gateway.post("/v1/telemetry", content=body(hr_block()),
                                     headers=auth(ingest_site.device_token))
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "3" and r.json()["error"] == "broker_unavailable"
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
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"


def test_unreachable_credential_store_gives_503_not_401(ingest_site) -> None:
    settings = ingest_site.settings.model_copy(
        update={"database_url": f"postgresql://clinstream@127.0.0.1:{free_port()}/clinstream"})
    with TestClient(create_app(settings, IngestSettings(deadline_s=DEADLINE_S, retry_after_s=3))) as client:
        r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
        assert r.status_code == 503 and r.json()["error"] == "database_unavailable" and "Retry-After" in r.headers
        assert client.get("/readyz").json()["database"] is False


def _post_block(client: TestClient, ingest_site) -> int:
    r = client.post("/v1/telemetry", content=body(hr_block()), headers=auth(ingest_site.device_token))
    assert r.status_code in (202, 503), r.text
    assert r.status_code == 202 or r.headers["Retry-After"] == "3", r.text
    return r.status_code


@pytest.mark.faults
def test_no_202_while_the_real_broker_is_stopped_and_202_again_after_it_returns(ingest_site) -> None:
    """Stop the real local broker (under the stack lock, as the fault suite does): every answer is 503 +
    Retry-After, never 202, also from a gateway started during the outage; once the broker is back, both
    gateways accept again without a restart."""
    settings = ingest_site.settings
    host, port = broker_address(settings)
    with ExitStack() as gateways:
        before = gateways.enter_context(_gateway(ingest_site, settings.kafka_bootstrap))
        wait_until(lambda: _post_block(before, ingest_site) == 202, 60, "the gateway to accept", step_s=0.5)
        with stack_lock(settings):
            stop_kafka(settings)
            try:
                assert port_refuses(host, port) and not kafka_is_up(settings, timeout_s=1.0)  # the fault happened
                during = gateways.enter_context(_gateway(ingest_site, settings.kafka_bootstrap))
                codes = [_post_block(client, ingest_site) for client in (before, during) for _ in range(3)]
                assert codes == [503] * 6
                lims = before.post("/v1/biobank/events", content=orjson.dumps({"events": [assay_event()]}),
                                   headers=auth(ingest_site.lims_token))
                assert lims.status_code == 503 and "Retry-After" in lims.headers
                assert during.get("/readyz").json()["broker"] is False
            finally:
                start_kafka(settings)
        wait_until(lambda: kafka_is_up(settings), 60, "the broker to answer again")
        for client in (before, during):
            wait_until(lambda c=client: _post_block(c, ingest_site) == 202, 60, "a 202 after the broker returned",
                       step_s=0.5)
            assert client.app.state.gateway.producer.broker_up  # type: ignore[attr-defined]
