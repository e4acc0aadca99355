"""Shared fixtures: settings pointing at the real local stack, with a fresh site per test for isolation."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from clinstream.core.config import Settings


def _base_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


@pytest.fixture
def site_id() -> str:
    """A unique site id, so that each test gets its own topics and DB schema."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(site_id: str) -> Settings:
    """Settings of the real local stack (CLINSTREAM_* env), for a fresh test site."""
    return _base_settings(site_id=site_id)


@pytest.fixture
def kafka_site(settings: Settings) -> Iterator[Settings]:
    """A test site whose topics exist on the real broker; deleted afterwards."""
    from clinstream.core.topic_admin import apply_topics, delete_site_topics

    apply_topics(settings)
    yield settings
    if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
        delete_site_topics(settings)


@pytest.fixture
def db_site(settings: Settings) -> Iterator[Settings]:
    """A test site whose feature-store schema is migrated in the real TimescaleDB; dropped afterwards."""
    from clinstream.core.db import connect
    from clinstream.store.migrate import migrate

    migrate(settings)
    yield settings
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
