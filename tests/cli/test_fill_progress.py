"""`clinstream federated fill` fills real site schemas behind a progress bar on stderr, stdout keeps the reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from clinstream.cli import cli
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.federated.roles import drop_reader_role

pytestmark = pytest.mark.integration


@pytest.fixture
def two_sites(settings: Settings) -> Iterator[list[Settings]]:
    sites = [Settings(**{**settings.model_dump(), "site_id": "t" + uuid.uuid4().hex[:10]}) for _ in range(2)]
    yield sites
    for s in sites:
        drop_reader_role(s)
        with connect(s, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{s.db_schema}" CASCADE')


def test_fill_reports_each_site_on_stdout_and_its_progress_on_stderr(two_sites: list[Settings]) -> None:
    args = ["federated", "fill", "--participants", "2", "--days", "14"]
    for s in two_sites:
        args += ["--site", s.site_id]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for s in two_sites:
        assert f"{s.site_id}: 2 participants" in result.stdout
    assert "2/2" in result.stderr and "fill" in result.stderr
    assert "2/2" not in result.stdout
