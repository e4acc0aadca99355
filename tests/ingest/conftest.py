"""Fixtures of the ingest tests: one migrated test site with topics, credentials and a running in-process gateway."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.ingest.app import create_app
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.credentials import credentials_schema, register_device, register_lims

SMALL_LIMITS = {"max_body_bytes": 256 * 1024, "max_decoded_bytes": 1024 * 1024, "deadline_s": 5.0}


@dataclass(frozen=True)
class IngestSite:
    """A test site: settings, gateway limits and tokens of two devices (P-000001, P-000002) and one LIMS."""

    settings: Settings
    limits: IngestSettings
    device_token: str
    device_id: str
    other_device_token: str
    lims_token: str


@pytest.fixture(scope="session")
def ingest_site() -> Iterator[IngestSite]:
    """Topics applied on the real broker and the schema migrated in the real DB; removed after the session."""
    from clinstream.core.topic_admin import apply_topics, delete_site_topics
    from clinstream.store.migrate import migrate

    settings = Settings(site_id="ti" + uuid.uuid4().hex[:9])
    apply_topics(settings)
    migrate(settings)
    with connect(settings) as conn:
        dev1 = register_device(conn, "SIM-DEV-0001", "P-000001")
        dev2 = register_device(conn, "SIM-DEV-0002", "P-000002")
        lims = register_lims(conn, "lims-test")
        conn.commit()
    yield IngestSite(settings, IngestSettings(**SMALL_LIMITS), dev1.token, "SIM-DEV-0001", dev2.token, lims.token)
    if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
        delete_site_topics(settings)
    drop_site_schemas(settings)


def drop_site_schemas(settings: Settings) -> None:
    """Drop a test site's feature-store and credential schemas."""
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
        conn.execute(f'DROP SCHEMA IF EXISTS "{credentials_schema(settings.db_schema)}" CASCADE')


@pytest.fixture(scope="session")
def gateway(ingest_site: IngestSite) -> Iterator[TestClient]:
    """The gateway app in-process (its producer talks to the real broker, its pool to the real DB)."""
    with TestClient(create_app(ingest_site.settings, ingest_site.limits)) as client:
        yield client
