"""Fixtures of the fault-injection suite: a fresh site with devices, LIMS key and pseudonym key; the stack kept up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from faults_harness import FaultSite, ensure_shared_stack, register_site

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.pseudonymise.keys import init_key_file
from ports import free_port

PARTICIPANTS = 20


@pytest.fixture(autouse=True)
def stack_guard() -> Iterator[None]:
    """Every fault test starts and ends with the shared broker and database up."""
    ensure_shared_stack()
    try:
        yield
    finally:
        ensure_shared_stack()


def _delete_topics(settings: Settings) -> None:
    from clinstream.core.topic_admin import admin_client, delete_site_topics

    delete_site_topics(settings)
    admin = admin_client(settings)
    prefix = f"clinstream-{settings.site_id}-"
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(30)


@pytest.fixture
def fault_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSite]:
    """A fresh site: topics applied, schema migrated, one device per participant, a LIMS key and a key file."""
    from clinstream.core.topic_admin import apply_topics
    from clinstream.store.migrate import migrate

    site_id = "tf" + uuid.uuid4().hex[:9]
    tmp = tmp_path_factory.mktemp(f"faults-{site_id}")
    key_file = tmp / "keys" / "site.json"
    init_key_file(key_file)
    settings = Settings(site_id=site_id, gateway_port=free_port(), pseudonym_key_file=key_file,
                        data_dir=tmp / "data")
    apply_topics(settings)
    migrate(settings)
    try:
        yield register_site(settings, PARTICIPANTS)
    finally:
        ensure_shared_stack()
        if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
            _delete_topics(settings)
        with connect_with_retry(settings, max_wait_s=30, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
