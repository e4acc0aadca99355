"""End to end, on the real stack: a participant withdraws consent through the gateway's LIMS endpoint.

The site's gateway and workers run as child processes (pipeline.processes.SitePipeline). After the withdrawal's
202: the pseudonymiser stops the participant's flow within 5 s (telemetry sent from then on never reaches the
pseudonymised topic); every feature table of the site holds no row of the participant within 60 s; the store's
erasure audit records the erasure; the federated reader role no longer sees the participant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.db import connect, connect_with_retry
from clinstream.core.topic_admin import apply_topics, delete_site_topics
from clinstream.core.topics import AUDIT, PSEUDO_TELEMETRY
from clinstream.federated.roles import connect_reader, drop_reader_role, ensure_reader_role, reader_url
from clinstream.ingest.credentials import register_device, register_lims
from clinstream.pseudonymise.keys import init_key_file
from clinstream.pseudonymise.pseudonyms import Pseudonymiser
from clinstream.store.migrate import migrate
from clinstream.store.writer import ERASURE_KEEP_TABLES
from clinstream_devtools.federated.pipeline_fill import LagProbe
from clinstream_devtools.pipeline.processes import SitePipeline
from condition_wait import wait_until
from ports import free_port
from topic_read import read_values

pytestmark = pytest.mark.integration

LEAVER, STAYER = "P-8100001", "P-8100002"
FLOW_STOPS_S = 5.0
PURGED_S = 60.0
MINUTE_MS = 60_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Site:
    """The test site: settings, tokens and the participants' pseudonyms."""

    settings: Settings
    device_tokens: dict[str, str]
    lims_token: str
    pseudonyms: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site_id = "te" + uuid.uuid4().hex[:9]
    key_file = tmp_path / "keys" / "site.json"
    ring = init_key_file(key_file)
    settings = Settings(site_id=site_id, gateway_port=free_port(), pseudonym_key_file=key_file,
                        data_dir=tmp_path / "data")
    apply_topics(settings)
    migrate(settings)
    ensure_reader_role(settings)
    with connect_with_retry(settings, max_wait_s=30) as conn:
        tokens = {p: register_device(conn, f"SIM-E2E-{i}", p).token for i, p in enumerate((LEAVER, STAYER))}
        lims = register_lims(conn, "e2e-lims").token
        conn.commit()
    pseudonymiser = Pseudonymiser(ring)
    try:
        yield Site(settings, tokens, lims, {p: pseudonymiser.participant(p) for p in (LEAVER, STAYER)})
    finally:
        drop_reader_role(settings)
        delete_site_topics(settings)
        with connect_with_retry(settings, max_wait_s=30, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def _lims(site: Site, *events: dict[str, Any]) -> None:
    resp = httpx.post(f"{site.url}/v1/biobank/events", json={"events": list(events)},
                      headers={"Authorization": f"Bearer {site.lims_token}"}, timeout=30.0)
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["accepted"]) == len(events), resp.text


def _event(participant: str, occurred_ms: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "participant_id": participant, "occurred_at": iso(occurred_ms),
            "recorded_at": iso(occurred_ms), "payload": payload}


def _consent(participant: str, action: str, occurred_ms: int) -> dict[str, Any]:
    return _event(participant, occurred_ms, {"kind": "consent", "action": action,
                                             "status": "ACTIVE" if action == "GRANT" else "INACTIVE",
                                             "scope": ["DUO:0000042"]})


def _sample_and_assay(participant: str, occurred_ms: int) -> list[dict[str, Any]]:
    sample_id = f"SMP-{participant[-3:]}-001"
    return [_event(participant, occurred_ms, {"kind": "sample", "event_type": "CENTRIFUGED", "sample_id": sample_id,
                                              "sample_type": "BLD", "container": "SST", "temperature_c": 21.0,
                                              "centrifugation": {"g_force": 2000.0, "minutes": 10.0,
                                                                 "temperature_c": 4.0}}),
            _event(participant, occurred_ms + MINUTE_MS, {"kind": "assay", "sample_id": sample_id, "analyte": "CRP",
                                                          "loinc_code": "1988-5", "value": 3.2, "unit": "mg/L"})]


def _telemetry(site: Site, participant: str, first_ms: int, minutes: int, tag: str) -> list[str]:
    """Heart-rate blocks, one per minute; the block ids the gateway acknowledged."""
    blocks = [{"block_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"e2e/{tag}/{participant}/{m}")),
               "participant_id": participant, "sequence": m, "start": iso(first_ms + m * MINUTE_MS),
               "utc_offset_minutes": 0, "schema": "heart-rate", "unit": "beats/min",
               "offsets_ms": [i * 1000 for i in range(60)], "values": [62.0 + i % 7 for i in range(60)]}
              for m in range(minutes)]
    resp = httpx.post(f"{site.url}/v1/telemetry", json={"blocks": blocks},
                      headers={"Authorization": f"Bearer {site.device_tokens[participant]}"}, timeout=30.0)
    assert resp.status_code == 202, resp.text
    return list(resp.json()["accepted"])


def _feature_tables(settings: Settings) -> list[str]:
    """Every table of the site that holds participant pseudonyms, except the erasure bookkeeping itself."""
    with connect(settings) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
                            " AND column_name = 'participant_pseudonym' AND table_name IN (SELECT table_name"
                            " FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE')"
                            " ORDER BY 1", (settings.db_schema, settings.db_schema)).fetchall()
    return [str(r[0]) for r in rows if str(r[0]) not in ERASURE_KEEP_TABLES]


def _rows_of(settings: Settings, pseudonym: str) -> dict[str, int]:
    with connect(settings) as conn:
        return {table: int(conn.execute(f'SELECT count(*) FROM "{table}" WHERE participant_pseudonym = %s',
                                        (pseudonym,)).fetchone()[0])  # type: ignore[index]
                for table in _feature_tables(settings)}


def _reader_sees(site: Site, pseudonym: str) -> int:
    with connect_reader(site.settings.site_id, reader_url(site.settings.database_url, site.settings.site_id)) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM wearable_features_current WHERE participant_pseudonym = %s)"
                           " + (SELECT count(*) FROM sample_features_current WHERE participant_pseudonym = %s)",
                           (pseudonym, pseudonym)).fetchone()
    assert row is not None
    return int(row[0])


def _topic_values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    codec = get_codec()
    return [codec.decode(v) for v in read_values(settings, topic)]


def _withdrawn(settings: Settings, pseudonym: str) -> bool:
    return any(a["action"] == "CONSENT_WITHDRAWN" and a["participant_pseudonym"] == pseudonym
               for a in _topic_values(settings, AUDIT.name(settings.site_id)))


def test_withdrawal_stops_the_flow_purges_every_feature_table_audits_and_hides_from_the_reader(site: Site) -> None:
    settings = site.settings
    leaver, stayer = site.pseudonyms[LEAVER], site.pseudonyms[STAYER]
    now = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    with SitePipeline(settings) as pipeline:
        pipeline.wait_ready(60)
        _lims(site, *(_consent(p, "GRANT", now - 6 * 60 * MINUTE_MS) for p in (LEAVER, STAYER)))
        _lims(site, *(e for p in (LEAVER, STAYER) for e in _sample_and_assay(p, now - 50 * MINUTE_MS)))
        for p in (LEAVER, STAYER):
            _telemetry(site, p, now - 40 * MINUTE_MS, 10, "before")

        def both_stored() -> bool:
            rows = [_rows_of(settings, p) for p in (leaver, stayer)]
            return all(r.get("wearable_features", 0) > 0 and r.get("sample_features", 0) > 0 for r in rows)

        wait_until(both_stored, 120, "the features of both participants in the store", step_s=0.5)
        assert _reader_sees(site, leaver) > 0

        _lims(site, _consent(LEAVER, "WITHDRAW", now - MINUTE_MS))
        # The flow stops within 5 s: the pseudonymiser has applied the withdrawal (its audit record is out).
        wait_until(lambda: _withdrawn(settings, leaver), FLOW_STOPS_S, "the pseudonymiser to apply the withdrawal",
                   step_s=0.1)
        after = {p: _telemetry(site, p, now - 20 * MINUTE_MS, 5, "after") for p in (LEAVER, STAYER)}

        wait_until(lambda: not any(_rows_of(settings, leaver).values()), PURGED_S,
                   "every feature table to hold no row of the withdrawn participant", step_s=0.5)
        probe = LagProbe(settings)
        wait_until(lambda: probe.uncommitted() == 0, 120, "every stage to process all of its input", step_s=0.5)

    forwarded = {str(b["block_id"]) for b in _topic_values(settings, PSEUDO_TELEMETRY.name(settings.site_id))}
    assert not forwarded & set(after[LEAVER]), "telemetry sent after the withdrawal reached the pseudonymised topic"
    assert set(after[STAYER]) <= forwarded  # the other participant's flow goes on
    assert not any(_rows_of(settings, leaver).values())  # nothing came back after the purge
    assert all(_rows_of(settings, stayer)[t] > 0 for t in ("wearable_features", "sample_features"))
    with connect(settings) as conn:
        audit = conn.execute("SELECT rows_deleted, completed_at >= requested_at FROM erasure_audit"
                             " WHERE participant_pseudonym = %s", (leaver,)).fetchall()
    assert audit and sum(int(r[0]) for r in audit) > 0 and all(r[1] for r in audit), audit
    assert _reader_sees(site, leaver) == 0
    assert _reader_sees(site, stayer) > 0
