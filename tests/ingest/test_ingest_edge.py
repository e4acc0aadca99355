"""The gateway at the edge (issue 17) against the real broker and database: TLS terminated by the gateway or by
nginx, client certificates for the LIMS, per-credential limits (429, shared by processes), LIMS key scopes; and the
participant's time zone from the device credential (issue 11)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import assay_event, auth, body, free_port, hr_block, read_topic
from ingest_processes import gateway_process, run_cli, stop
from ingest_tls import TlsFiles, make_tls_files

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import Stage, dlq
from clinstream.ingest.app import create_app
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.credentials import (
    CredentialError,
    credentials_schema,
    list_devices,
    register_device,
    register_lims,
)
from condition_wait import wait_until

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "clinstream-gateway.conf"


@pytest.fixture(scope="module")
def site() -> Iterator[Settings]:
    from clinstream.core.topic_admin import apply_topics, delete_site_topics
    from clinstream.store.migrate import migrate

    settings = Settings(site_id="te" + uuid.uuid4().hex[:9])
    apply_topics(settings)
    migrate(settings)
    yield settings
    delete_site_topics(settings)
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
        conn.execute(f'DROP SCHEMA IF EXISTS "{credentials_schema(settings.db_schema)}" CASCADE')


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _device(site: Settings, participant: str, **options: object) -> str:
    with connect(site, autocommit=True) as conn:
        return register_device(conn, f"SIM-EDGE-{uuid.uuid4().hex[:8]}", participant, **options).token  # type: ignore[arg-type]


def _lims(site: Settings, **options: object) -> str:
    with connect(site, autocommit=True) as conn:
        return register_lims(conn, "lims-edge", **options).token  # type: ignore[arg-type]


# ---- TLS -----------------------------------------------------------------------------------------------------

def test_https_when_tls_is_configured_and_plain_http_is_refused(site: Settings, tls: TlsFiles) -> None:
    token = _device(site, "P-000061")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with gateway_process(site, port, "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                         url=url, verify=str(tls.ca)):
        r = httpx.post(f"{url}/v1/telemetry", content=body(hr_block("P-000061")), headers=auth(token),
                       verify=str(tls.ca))
        assert r.status_code == 202, r.text
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}/v1/telemetry", content=body(hr_block("P-000061")),
                       headers=auth(token))


def test_client_certificate_required_where_configured(site: Settings, tls: TlsFiles) -> None:
    lims = _lims(site)
    port, plain_port = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    events = orjson.dumps({"events": [assay_event("P-000062")]})
    mtls = ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key), "--client-ca", str(tls.ca)]
    with gateway_process(site, port, *mtls, url=url, verify=_client_context(tls),
                         CLINSTREAM_INGEST_LIMS_REQUIRES_CLIENT_CERT="true"), \
            gateway_process(site, plain_port, CLINSTREAM_INGEST_LIMS_REQUIRES_CLIENT_CERT="true"):
        with pytest.raises(httpx.HTTPError):  # no client certificate: the TLS handshake fails
            httpx.post(f"{url}/v1/biobank/events", content=events, headers=auth(lims), verify=str(tls.ca))
        r = httpx.post(f"{url}/v1/biobank/events", content=events, headers=auth(lims), verify=_client_context(tls))
        assert r.status_code == 202, r.text
        # a gateway that does not verify client certificates refuses LIMS events of this site
        r = httpx.post(f"http://127.0.0.1:{plain_port}/v1/biobank/events", content=events, headers=auth(lims))
        assert r.status_code == 403 and r.json()["error"] == "client_certificate_required"


def _client_context(tls: TlsFiles) -> object:
    import ssl

    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return context


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (scripts/install-proxy)")
def test_tls_terminated_by_nginx_with_the_repository_config(site: Settings, tls: TlsFiles, tmp_path: Path) -> None:
    token = _device(site, "P-000063")
    gateway_port, proxy_port = free_port(), free_port()
    for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / folder).mkdir()
    config = DEPLOY.read_text()
    for name, value in {"USER": "root", "PREFIX": str(tmp_path), "LISTEN": f"127.0.0.1:{proxy_port}",
                        "CERT": str(tls.server_cert), "KEY": str(tls.server_key),
                        "GATEWAY": f"127.0.0.1:{gateway_port}"}.items():
        config = config.replace(f"@{name}@", value)
    (tmp_path / "nginx.conf").write_text(config)
    with gateway_process(site, gateway_port):
        proxy = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g",
                                  "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"https://127.0.0.1:{proxy_port}"

            def proxy_ready() -> bool:
                assert proxy.poll() is None, (proxy.stderr.read() if proxy.stderr else b"").decode()
                try:
                    return httpx.get(f"{url}/readyz", verify=str(tls.ca), timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(proxy_ready, 20, "nginx to proxy the gateway's /readyz", step_s=0.1)
            r = httpx.post(f"{url}/v1/telemetry", content=body(hr_block("P-000063")), headers=auth(token),
                           verify=str(tls.ca))
            assert r.status_code == 202, r.text
            plain = httpx.post(f"http://127.0.0.1:{proxy_port}/v1/telemetry", content=body(hr_block("P-000063")),
                               headers=auth(token))
            assert plain.status_code == 400  # nginx: "The plain HTTP request was sent to HTTPS port"
        finally:
            stop(proxy)  # type: ignore[arg-type]


# ---- limits --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(site: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(site, IngestSettings())) as client:
        yield client


def test_over_its_limit_a_device_gets_429_then_202_after_waiting(site: Settings, gateway: TestClient) -> None:
    token = _device(site, "P-000064", max_requests_per_min=60)  # one request a second, a minute's burst
    accepted = 0
    while (r := gateway.post("/v1/telemetry", content=body(hr_block("P-000064")),
                             headers=auth(token))).status_code == 202:
        accepted += 1
        assert accepted <= 600, "never limited"
    assert accepted >= 60  # a minute's burst (plus whatever refilled meanwhile) before the first 429
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    wait_s = int(r.headers["Retry-After"])
    assert wait_s == 1

    def answered_after_the_limit() -> int | None:  # the client waits as Retry-After told it, then tries again
        status = gateway.post("/v1/telemetry", content=body(hr_block("P-000064")), headers=auth(token)).status_code
        return None if status == 429 else status

    assert wait_until(answered_after_the_limit, wait_s + 2.0, "an answer other than 429", step_s=0.1) == 202
    limited = re.search(r'clinstream_gateway_rate_limited_total\{unit="requests"\} (\S+)', gateway.get("/metrics").text)
    assert limited is not None and float(limited.group(1)) >= 1


def test_over_its_readings_limit_nothing_is_dead_lettered(site: Settings, gateway: TestClient) -> None:
    token = _device(site, "P-000065", max_readings_per_min=120)
    assert gateway.post("/v1/telemetry", content=body(hr_block("P-000065"), hr_block("P-000065")),
                        headers=auth(token)).status_code == 202
    bad = hr_block("P-000065", unit="bpm")  # would be dead-lettered if the request were taken
    r = gateway.post("/v1/telemetry", content=body(hr_block("P-000065"), bad), headers=auth(token))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    dead = [orjson.loads(get_codec().decode(rec.value)["original_value"]).get("block_id")
            for rec in read_topic(site, dlq(Stage.INGEST).name(site.site_id))]
    assert bad["block_id"] not in dead
    metrics = gateway.get("/metrics").text
    assert 'clinstream_gateway_limit_usage_ratio_bucket{le="1.0",unit="readings"}' in metrics
    assert "P-000065" not in metrics


def test_two_gateway_processes_enforce_their_documented_shares(site: Settings) -> None:
    token = _device(site, "P-000066", max_requests_per_min=20)  # the site's limit for this device
    port_a, port_b = free_port(), free_port()
    with gateway_process(site, port_a, CLINSTREAM_INGEST_GATEWAY_PROCESSES="2"), \
            gateway_process(site, port_b, CLINSTREAM_INGEST_GATEWAY_PROCESSES="2"):
        def accepted_before_429(port: int) -> int:
            accepted = 0
            while httpx.post(f"http://127.0.0.1:{port}/v1/telemetry", content=body(hr_block("P-000066")),
                             headers=auth(token), timeout=10).status_code == 202:
                accepted += 1
                assert accepted < 40, "never limited"
            return accepted

        a, b = accepted_before_429(port_a), accepted_before_429(port_b)
    # Each process allows its share, 10 (a minute's burst of 20 / 2), plus what refilled meanwhile at 10 a minute;
    # reaching the site's whole 20 in one process would take a minute of refill.
    assert 10 <= a < 20 and 10 <= b < 20, (a, b)


# ---- LIMS scopes ---------------------------------------------------------------------------------------------

def test_a_scoped_lims_key_is_refused_outside_its_scope(site: Settings, gateway: TestClient) -> None:
    with connect(site, autocommit=True) as conn:
        issued = register_lims(conn, "lims-scoped", event_types=["assay"], sample_prefixes=["SMP-1"])
    def post(event: dict[str, object]) -> httpx.Response:
        return gateway.post("/v1/biobank/events", content=orjson.dumps({"events": [event]}),
                            headers=auth(issued.token))

    assert post(assay_event("P-000067")).status_code == 202
    r = post(assay_event("P-000067", sample_id="SMP-9-01"))
    assert r.status_code == 403 and r.json()["field_path"] == "events[0].payload.sample_id"
    consent = {**assay_event("P-000067"), "payload": {"kind": "consent", "action": "GRANT", "status": "ACTIVE"}}
    r = post(consent)
    assert r.status_code == 403 and r.json()["field_path"] == "events[0].payload.kind"
    done = run_cli(site, "lims", "scope", issued.key_id, "--event-type", "assay", "--event-type", "consent",
                   "--sample-prefix", "SMP-1")
    assert done.returncode == 0, done.stderr

    def consent_accepted() -> bool:
        status = post({**consent, "event_id": str(uuid.uuid4())}).status_code
        assert status in (202, 403), status
        return status == 202

    wait_until(consent_accepted, 1.0, "the widened scope (the gateway's cached key is evicted by NOTIFY)", step_s=0.0)
    assert run_cli(site, "lims", "scope", issued.key_id, "--event-type", "lifecycles").returncode == 2


# ---- time zone -----------------------------------------------------------------------------------------------

def test_the_device_time_zone_is_stamped_on_every_block(site: Settings, gateway: TestClient) -> None:
    token = _device(site, "P-000068", time_zone="Europe/Berlin")
    gw = gateway.app.state.gateway  # type: ignore[attr-defined]
    from clinstream.ingest.credentials import parse_token

    device = gateway.portal.call(gw.db.device, parse_token(token))  # type: ignore[union-attr]
    assert device.time_zone == "Europe/Berlin"
    prepared = gw.telemetry.prepare({"blocks": [hr_block("P-000068"), hr_block("P-000068")]}, device,
                                    int(time.time() * 1000))
    assert [b.record["time_zone"] for b in prepared.outcome.accepted] == ["Europe/Berlin"] * 2
    assert gateway.post("/v1/telemetry", content=body(hr_block("P-000068")), headers=auth(token)).status_code == 202
    with pytest.raises(CredentialError, match="IANA"):
        _device(site, "P-000069", time_zone="Mars/Olympus")
    # The site default is applied by the gateway when it stamps (test_ingest_time_zone.py), never written into the
    # registration: a zone from the LIMS consent event must still reach a device registered without one.
    serial = f"SIM-TZ-{uuid.uuid4().hex[:6]}"
    registered = run_cli(site, "devices", "register", "--device-id", serial, "--participant", "P-000070",
                         CLINSTREAM_INGEST_TIME_ZONE="Europe/Lisbon")
    assert registered.returncode == 0, registered.stderr
    refused = run_cli(site, "devices", "register", "--device-id", serial + "x", "--participant", "P-000070",
                      "--time-zone", "Berlin")
    assert refused.returncode == 2 and "IANA" in refused.stderr
    with connect(site) as conn:
        zones = {row.device_id: row.time_zone for row in list_devices(conn)}
    assert zones[serial] is None
