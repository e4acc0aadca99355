"""Moving a site to feature version 2 on the real broker and TimescaleDB: `clinstream replay` into version 2 (beside
the live version 1), then `clinstream features promote --version 2`; the stored version-2 rows equal an in-process
version-2 run of the same blocks (per window the record the store keeps)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from features_factories import clock_block, generate, stored_view
from features_kafka import produce

from clinstream.core.avro import subject_key
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import PSEUDO_TELEMETRY

pytestmark = pytest.mark.integration

CLINSTREAM = Path(sys.executable).parent / "clinstream"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    from clinstream.core.topic_admin import apply_topics, delete_site_topics
    from clinstream.store.migrate import migrate

    settings = Settings(site_id="t" + uuid.uuid4().hex[:10])  # type: ignore[call-arg]
    apply_topics(settings)
    migrate(settings)
    try:
        yield settings, tmp_path_factory.mktemp("migration")
    finally:
        delete_site_topics(settings)
        with connect(settings, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def _cli(settings: Settings, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update({"CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "CLINSTREAM_DATABASE_URL": settings.database_url, "CLINSTREAM_DATA_DIR": str(data_dir),
                "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions), "COLUMNS": "200"})
    return subprocess.run([str(CLINSTREAM), *args], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def _query(settings: Settings, sql: str) -> list[Any]:
    with connect(settings, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def test_replay_into_version_2_then_promote_moves_the_site(site: tuple[Settings, Path]) -> None:
    settings, data_dir = site
    data = generate(n_participants=2, hours=26, hr_block_s=300, seed=13, site_id=settings.site_id)
    blocks = [*data.blocks, clock_block(max(b.record["received_at"] for b in data.blocks), settings.site_id)]
    produce(settings, PSEUDO_TELEMETRY.name(settings.site_id),
            [(subject_key(settings.site_id, b.participant), b.value) for b in blocks])

    replay = _cli(settings, data_dir, "replay", "--stage", "features", "--version", "2", "--run-id", "to-v2")
    assert replay.returncode == 0, replay.stderr[-3000:] + replay.stdout[-3000:]
    stored = _query(settings, "SELECT participant_pseudonym, feature_set, window_kind, window_start, feature_values,"
                              " completeness FROM wearable_features WHERE version = 2")
    assert stored
    assert not _query(settings, "SELECT 1 FROM wearable_features WHERE version = 2 AND feature_set = 'hrv'"
                                " AND window_kind = 'MINUTE'")  # no ultra-short-term HRV in version 2
    want = stored_view(blocks, settings.site_id, settings.topic_partitions, 2, data.participants)
    got = {(r[0], r[1], r[2], int(r[3].timestamp() * 1000)): r for r in stored if r[0] in data.participants}
    assert set(got) == set(want)
    for key, rec in want.items():
        assert got[key][4] == pytest.approx(rec["values"]), key
        assert got[key][5] == pytest.approx(rec["completeness"]), key

    promote = _cli(settings, data_dir, "features", "promote", "--version", "2")
    assert promote.returncode == 0, promote.stderr[-3000:] + promote.stdout[-3000:]
    assert "active feature version now: 2" in promote.stdout
    assert _query(settings, "SELECT version FROM active_version") == [(2,)]

