"""Fixtures of the pseudonymise integration tests: one site, key file and worker process per test module."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from pseudonymise_kafka import WorkerProcess, WorkerSite

from clinstream.core.config import Settings
from clinstream.pseudonymise.keys import init_key_file


def _delete_worker_topics(settings: Settings) -> None:
    from clinstream.core.topic_admin import admin_client

    admin = admin_client(settings)
    prefix = f"clinstream-{settings.site_id}-"
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(30)


@pytest.fixture(scope="module")
def worker_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerSite]:
    """A fresh site (topics applied, deleted afterwards) with one worker process for the whole module."""
    from clinstream.core.topic_admin import apply_topics, delete_site_topics

    settings = Settings(site_id="t" + uuid.uuid4().hex[:10])  # type: ignore[call-arg]
    tmp = tmp_path_factory.mktemp(f"pseudo-{settings.site_id}")
    key_file = tmp / "keys" / "site.json"
    init_key_file(key_file)
    apply_topics(settings)
    worker = WorkerProcess(settings, key_file, tmp / "data", tmp / "worker.log")
    worker.start()
    try:
        yield WorkerSite(settings, key_file, worker)
    finally:
        worker.stop()
        if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
            delete_site_topics(settings)
            _delete_worker_topics(settings)
