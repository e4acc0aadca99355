"""The participant's time zone from the LIMS consent event (issue 11): validation, the cached look-up and its NOTIFY
eviction, the zone on the raw telemetry topic, and which source wins (registration, LIMS, site default)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import MIN, auth, body, hr_block, now_ms, read_topic

from clinstream.core.avro import get_codec
from clinstream.core.db import connect
from clinstream.core.topics import RAW_TELEMETRY, Stage, dlq
from clinstream.ingest.app import create_app
from clinstream.ingest.biobank_validate import BiobankValidator
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.credentials import credentials_schema, parse_token, register_device
from clinstream.ingest.gateway_db import DevicePrincipal
from clinstream.ingest.time_zones import is_iana_zone, stamped_time_zone
from clinstream_devtools.simulate.telemetry import iso_ms
from condition_wait import wait_until

if TYPE_CHECKING:
    from conftest import IngestSite

EVICTION_DEADLINE_S = 5.0  # far below the cache's 30 s fallback TTL: only a NOTIFY can refresh the row this fast


def consent(participant: str, time_zone: Any = None, *, hours_ago: float = 1.0) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": "consent", "action": "GRANT", "status": "ACTIVE", "scope": ["DUO:0000042"]}
    if time_zone is not None:
        payload["time_zone"] = time_zone
    return {"event_id": str(uuid.uuid4()), "participant_id": participant,
            "occurred_at": iso_ms(now_ms() - int(hours_ago * 60 * MIN)), "payload": payload}


# ---- pure logic ------------------------------------------------------------------------------------------------

def test_the_registration_wins_then_the_lims_then_the_site_default() -> None:
    assert stamped_time_zone("Europe/Berlin", "Asia/Tokyo", "UTC") == "Europe/Berlin"
    assert stamped_time_zone(None, "Asia/Tokyo", "UTC") == "Asia/Tokyo"
    assert stamped_time_zone(None, None, "UTC") == "UTC"
    assert stamped_time_zone(None, None, None) is None


@pytest.mark.parametrize("name", ["Europe/Berlin", "America/Argentina/Buenos_Aires", "UTC", "Etc/GMT+5"])
def test_iana_names_are_zones(name: str) -> None:
    assert is_iana_zone(name)


@pytest.mark.parametrize("name", ["Mars/Olympus", "Berlin", "europe/berlin", "localtime", "Factory", "",
                                  "../../etc/passwd", "/usr/share/zoneinfo/UTC", "posix/UTC", "x" * 5000, "UTC\x00"])
def test_other_names_are_not(name: str) -> None:
    assert not is_iana_zone(name)


@pytest.mark.parametrize(("zone", "reason"), [("Mars/Olympus", "IANA time zone"), (3600, "valid string"),
                                              ("E" * 65, "at most 64")])
def test_a_bad_zone_is_refused_naming_the_field(zone: Any, reason: str) -> None:
    result = BiobankValidator(IngestSettings(), "s1").validate(0, consent("P-1", zone), received_ms=now_ms())
    assert not hasattr(result, "record")
    assert result.rejection.field_path == "events[0].payload.time_zone"  # type: ignore[union-attr]
    assert reason in result.rejection.reason  # type: ignore[union-attr]


def test_events_accepted_before_the_field_existed_keep_their_content_hash() -> None:
    """Hashes made by the code before `time_zone` existed: a resend of such an event is still a duplicate."""
    event = {"event_id": "6f1c2a8e-5b7d-4c3e-9a1f-2d4b6c8e0a13", "participant_id": "P-000001",
             "occurred_at": "2026-03-01T09:00:00Z", "payload": {"kind": "consent", "action": "GRANT",
                                                                "status": "ACTIVE", "scope": ["DUO:0000042"],
                                                                "postcode": "ZZ99 1A"}}
    accepted = BiobankValidator(IngestSettings(), "s1").validate(0, event, received_ms=1_800_000_000_000)
    assert accepted.digest.hex() == "fd9e3ebeb54015be1172591ed4da582bb1694bfd68d1ccf54d4cd3fcac91a9e7"  # type: ignore[union-attr]
    with_zone = {**event, "payload": {**event["payload"], "time_zone": "Europe/Berlin"}}  # type: ignore[dict-item]
    assert BiobankValidator(IngestSettings(), "s1").validate(
        0, with_zone, received_ms=1_800_000_000_000).digest != accepted.digest  # type: ignore[union-attr]


# ---- against the real broker and database ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(ingest_site: IngestSite) -> Iterator[TestClient]:
    with TestClient(create_app(ingest_site.settings, IngestSettings())) as client:
        yield client


def _participant() -> str:
    return f"P-TZ{uuid.uuid4().hex[:8]}"


def _device(site: IngestSite, participant: str, time_zone: str | None = None) -> str:
    with connect(site.settings, autocommit=True) as conn:
        return register_device(conn, f"SIM-TZ-{uuid.uuid4().hex[:8]}", participant, time_zone=time_zone).token


def _looked_up(client: TestClient, token: str) -> DevicePrincipal:
    gw = client.app.state.gateway  # type: ignore[attr-defined]
    device = client.portal.call(gw.db.device, parse_token(token))  # type: ignore[union-attr]
    assert device is not None
    return device  # type: ignore[no-any-return]


def _wait_for_zone(client: TestClient, token: str, zone: str | None) -> None:
    wait_until(lambda: _looked_up(client, token).time_zone == zone, EVICTION_DEADLINE_S,
               f"the gateway to stamp {zone!r}", step_s=0.02)


def _stamped(site: IngestSite, client: TestClient, token: str, participant: str) -> str | None:
    """Send one block of the participant and return the time_zone it carries on the raw telemetry topic."""
    block = hr_block(participant)
    r = client.post("/v1/telemetry", content=body(block), headers=auth(token))
    assert r.status_code == 202, r.text
    codec = get_codec()
    for rec in read_topic(site.settings, RAW_TELEMETRY.name(site.settings.site_id)):
        record = codec.decode(rec.value)
        if str(record["block_id"]) == block["block_id"]:
            return record["time_zone"]  # type: ignore[no-any-return]
    raise AssertionError("the block is not on the raw topic")


def _post_events(client: TestClient, site: IngestSite, *events: dict[str, Any]) -> Any:
    return client.post("/v1/biobank/events", content=orjson.dumps({"events": list(events)}),
                       headers=auth(site.lims_token))


@pytest.mark.integration
def test_a_consent_zone_reaches_the_blocks_of_a_device_registered_without_one(ingest_site: IngestSite,
                                                                               gateway: TestClient) -> None:
    participant = _participant()
    token = _device(ingest_site, participant)
    assert _stamped(ingest_site, gateway, token, participant) is None  # no zone anywhere, no site default
    gw = gateway.app.state.gateway  # type: ignore[attr-defined]
    key_id = parse_token(token).key_id  # type: ignore[union-attr]
    # Cached by a look-up, unless a credential change anywhere (another test's) was announced meanwhile: such a
    # look-up is used once and not cached, so look up until one is.
    wait_until(lambda: _looked_up(gateway, token) and gw.db.cache.get("device", key_id), EVICTION_DEADLINE_S,
               "the credential (with no zone) to be cached", step_s=0.02)
    r = _post_events(gateway, ingest_site, consent(participant, "America/New_York"))
    assert r.status_code == 202, r.text
    _wait_for_zone(gateway, token, "America/New_York")  # the cached row was evicted by NOTIFY
    assert _stamped(ingest_site, gateway, token, participant) == "America/New_York"


@pytest.mark.integration
def test_a_bad_zone_gets_422_naming_the_field_and_its_bytes_go_to_the_dlq(ingest_site: IngestSite,
                                                                         gateway: TestClient) -> None:
    participant = _participant()
    event = consent(participant, "Mars/Olympus")
    r = _post_events(gateway, ingest_site, event)
    assert r.status_code == 422, r.text
    [rejected] = r.json()["rejected"]
    assert rejected["field_path"] == "events[0].payload.time_zone" and "IANA" in rejected["reason"]
    codec = get_codec()
    dead = [codec.decode(rec.value) for rec in read_topic(ingest_site.settings,
                                                         dlq(Stage.INGEST).name(ingest_site.settings.site_id))]
    [letter] = [d for d in dead if d["original_value"] == orjson.dumps(event)]
    assert letter["field_path"] == "events[0].payload.time_zone"
    with connect(ingest_site.settings) as conn:
        cred = credentials_schema(ingest_site.settings.db_schema)
        rows = conn.execute(f'SELECT 1 FROM "{cred}".participant_time_zones WHERE participant_id = %s',
                            (participant,)).fetchall()
    assert rows == []


@pytest.mark.integration
def test_the_registered_zone_wins_over_the_lims_zone(ingest_site: IngestSite, gateway: TestClient) -> None:
    participant = _participant()
    registered = _device(ingest_site, participant, "Europe/Berlin")
    unzoned = _device(ingest_site, participant)
    _looked_up(gateway, unzoned)  # cached before the consent event
    assert _post_events(gateway, ingest_site, consent(participant, "Asia/Tokyo")).status_code == 202
    _wait_for_zone(gateway, unzoned, "Asia/Tokyo")
    assert _stamped(ingest_site, gateway, registered, participant) == "Europe/Berlin"
    assert _stamped(ingest_site, gateway, unzoned, participant) == "Asia/Tokyo"


@pytest.mark.integration
def test_the_latest_consent_event_wins_whatever_the_arrival_order(ingest_site: IngestSite,
                                                                  gateway: TestClient) -> None:
    participant = _participant()
    token = _device(ingest_site, participant)
    newer, older = consent(participant, "Asia/Tokyo", hours_ago=1), consent(participant, "Europe/Paris", hours_ago=2)
    assert _post_events(gateway, ingest_site, newer).status_code == 202
    _wait_for_zone(gateway, token, "Asia/Tokyo")
    assert _post_events(gateway, ingest_site, older).status_code == 202
    assert _post_events(gateway, ingest_site, consent(participant)).status_code == 202  # no zone: unchanged
    with connect(ingest_site.settings) as conn:
        cred = credentials_schema(ingest_site.settings.db_schema)
        row = conn.execute(f'SELECT time_zone, event_id FROM "{cred}".participant_time_zones'
                           " WHERE participant_id = %s", (participant,)).fetchone()
    assert row is not None and (row[0], str(row[1])) == ("Asia/Tokyo", newer["event_id"])
    assert _looked_up(gateway, token).time_zone == "Asia/Tokyo"


@pytest.mark.integration
def test_the_site_default_applies_only_without_a_registered_or_lims_zone(ingest_site: IngestSite) -> None:
    participant = _participant()
    token = _device(ingest_site, participant)
    with TestClient(create_app(ingest_site.settings, IngestSettings(time_zone="Europe/Lisbon"))) as client:
        assert _stamped(ingest_site, client, token, participant) == "Europe/Lisbon"
        assert _post_events(client, ingest_site, consent(participant, "Australia/Sydney")).status_code == 202
        _wait_for_zone(client, token, "Australia/Sydney")
        assert _stamped(ingest_site, client, token, participant) == "Australia/Sydney"


def test_a_site_default_that_is_no_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="IANA"):
        IngestSettings(time_zone="Lisbon")


@pytest.mark.integration
def test_a_zone_that_cannot_be_recorded_gets_503_and_the_resend_records_it(ingest_site: IngestSite,
                                                                          gateway: TestClient) -> None:
    """The table is locked by another session: the gateway's write times out (statement_timeout) after the broker
    acknowledged; the LIMS is told 503 rather than 202, and its resend of the same event records the zone."""
    participant = _participant()
    token = _device(ingest_site, participant)
    event = consent(participant, "Pacific/Auckland")
    cred = credentials_schema(ingest_site.settings.db_schema)
    with connect(ingest_site.settings) as locker:
        locker.execute(f'LOCK TABLE "{cred}".participant_time_zones IN ACCESS EXCLUSIVE MODE')
        r = _post_events(gateway, ingest_site, event)
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        locker.rollback()
    r = _post_events(gateway, ingest_site, event)
    assert r.status_code == 202 and r.json()["accepted"] == [event["event_id"]], r.text
    _wait_for_zone(gateway, token, "Pacific/Auckland")
