"""Credentials in their own schema (issue 12 item 6) and the gateways' credential cache (issues 13 and 14), against
the real database and real `clinstream gateway` processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import assay_event, auth, body, free_port, hr_block
from ingest_processes import gateway_process, run_cli

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.federated.roles import drop_reader_role, ensure_reader_role, reader_url
from clinstream.ingest.credentials import credentials_schema, register_device, register_lims
from condition_wait import wait_until

pytestmark = pytest.mark.integration
REVOCATION_BOUND_S = 1.0  # the issues' functional bound: a revocation is effective everywhere within 1 s


@pytest.fixture(scope="module")
def site() -> Iterator[Settings]:
    """A migrated site with topics and its federated reader role; all removed afterwards."""
    from clinstream.core.topic_admin import apply_topics, delete_site_topics
    from clinstream.store.migrate import migrate

    settings = Settings(site_id="tc" + uuid.uuid4().hex[:9])
    apply_topics(settings)
    migrate(settings)
    ensure_reader_role(settings)
    yield settings
    drop_reader_role(settings)
    delete_site_topics(settings)
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
        conn.execute(f'DROP SCHEMA IF EXISTS "{credentials_schema(settings.db_schema)}" CASCADE')


def test_credentials_live_outside_the_feature_store_schema(site: Settings) -> None:
    cred = credentials_schema(site.db_schema)
    with connect(site) as conn:
        for table in ("device_credentials", "lims_credentials"):
            assert conn.execute("SELECT to_regclass(%s)", (f'"{site.db_schema}".{table}',)).fetchone() == (None,)
            assert conn.execute("SELECT to_regclass(%s)", (f'"{cred}".{table}',)).fetchone() != (None,)
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns"
                                              " WHERE table_schema = %s", (site.db_schema,)).fetchall()}
    assert not columns & {"device_id", "participant_id", "secret_sha256", "lims_name"}


def test_only_the_gateway_role_has_grants_on_the_credentials(site: Settings) -> None:
    cred = credentials_schema(site.db_schema)
    with connect(site, autocommit=True) as conn:
        register_device(conn, f"SIM-GRANT-{uuid.uuid4().hex[:8]}", "P-000041")
        owner = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        # the gateway's role (the site's database URL) reads and writes them
        assert conn.execute(f'SELECT count(*) FROM "{cred}".device_credentials').fetchone()[0] >= 1  # type: ignore[index]
        grantees = {r[0] for r in conn.execute(
            "SELECT grantee FROM information_schema.role_table_grants WHERE table_schema = %s", (cred,)).fetchall()}
        schema_acl = conn.execute("SELECT coalesce(array_to_string(nspacl, ','), '') FROM pg_namespace"
                                  " WHERE nspname = %s", (cred,)).fetchone()[0]  # type: ignore[index]
    assert grantees == {owner}
    assert all(entry.startswith(f"{owner}=") for entry in filter(None, schema_acl.split(",")))
    # the federated reader role has none: PostgreSQL refuses it the schema and the tables
    with psycopg.connect(reader_url(site.database_url, site.site_id), autocommit=True) as reader:
        assert reader.execute("SELECT has_schema_privilege(%s, 'USAGE')", (cred,)).fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f'SELECT key_id FROM "{cred}".device_credentials')
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f'SELECT key_id FROM "{cred}".lims_credentials')
        # ...while it still reads its feature relations
        reader.execute(f'SELECT count(*) FROM "{site.db_schema}".wearable_features')


def _status(url: str, token: str) -> int:
    return httpx.post(f"{url}/v1/telemetry", content=body(hr_block("P-000051")), headers=auth(token),
                      timeout=10).status_code


def test_a_revocation_through_the_cli_is_refused_by_another_gateway_within_a_second(site: Settings) -> None:
    with connect(site, autocommit=True) as conn:
        issued = register_device(conn, f"SIM-TWO-{uuid.uuid4().hex[:8]}", "P-000051")
    port_a, port_b = free_port(), free_port()
    with gateway_process(site, port_a), gateway_process(site, port_b):
        a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        for url in (a, b):  # both gateways now hold the credential in their caches
            assert [_status(url, issued.token) for _ in range(3)] == [202, 202, 202]
        cached = httpx.get(f"{b}/metrics", timeout=5).text
        assert 'clinstream_gateway_credential_lookups_total{source="cache"} 2.0' in cached
        revoked = run_cli(site, "devices", "revoke", issued.key_id)
        assert revoked.returncode == 0, revoked.stderr
        wait_until(lambda: _status(b, issued.token) == 401, REVOCATION_BOUND_S,  # from the revocation's commit
                   "the other gateway to refuse the revoked token", step_s=0.0)
        assert _status(a, issued.token) == 401


def test_the_lims_event_id_ledger_holds_across_gateways(site: Settings) -> None:
    with connect(site, autocommit=True) as conn:
        lims = register_lims(conn, "lims-two-gateways").token
    event = assay_event("P-000052")
    sent = orjson.dumps({"events": [event]})
    changed = orjson.dumps({"events": [{**event, "payload": {**event["payload"], "value": 9.9}}]})
    port_a, port_b = free_port(), free_port()
    with gateway_process(site, port_a), gateway_process(site, port_b):
        first = httpx.post(f"http://127.0.0.1:{port_a}/v1/biobank/events", content=sent, headers=auth(lims))
        again = httpx.post(f"http://127.0.0.1:{port_b}/v1/biobank/events", content=sent, headers=auth(lims))
        other = httpx.post(f"http://127.0.0.1:{port_b}/v1/biobank/events", content=changed, headers=auth(lims))
    assert first.json()["accepted"] == [event["event_id"]]
    assert again.status_code == 202 and again.json()["duplicates"] == [event["event_id"]]
    assert other.status_code == 422 and "already used" in other.json()["rejected"][0]["reason"]


def test_the_cache_is_off_while_its_listener_is_away(site: Settings) -> None:
    """Without a LISTEN connection every request reads the database (a missed NOTIFY cannot keep a token alive)."""
    from clinstream.ingest.app import create_app
    from clinstream.ingest.config import IngestSettings

    with connect(site, autocommit=True) as conn:
        issued = register_device(conn, f"SIM-LSN-{uuid.uuid4().hex[:8]}", "P-000053")
    with TestClient(create_app(site, IngestSettings())) as client:
        gw = client.app.state.gateway  # type: ignore[attr-defined]
        wait_until(lambda: gw.db.cache.listening, 10, "the credential cache's LISTEN connection", step_s=0.01)
        gw.db.cache.reset(listening=False)  # as when the listening connection is lost
        for _ in range(3):
            r = client.post("/v1/telemetry", content=body(hr_block("P-000053")), headers=auth(issued.token))
            assert r.status_code == 202
        assert gw.metrics.credential_lookups.labels("cache")._value.get() == 0
