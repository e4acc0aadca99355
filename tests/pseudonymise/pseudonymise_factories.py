"""Synthetic raw records (made-up people only) for the pseudonymise tests and benchmark."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.records import InRecord
from clinstream.core.topics import RAW_BIOBANK, RAW_TELEMETRY

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HR = "org.clinstream.telemetry.HeartRateSamples"
SLEEP = "org.clinstream.telemetry.SleepEpisodes"
ACC = "org.clinstream.telemetry.AccelerationSamples"


def block(pid: str = "P-000123", device: str = "SN-SYN-0001", seq: int = 1, start: int = T0,
          n: int = 60, site: str = "site-a", block_id: str | None = None, kind: str = HR,
          received_at: int | None = None) -> dict[str, Any]:
    """A raw TelemetryBlock record."""
    if kind == HR:
        measurement: tuple[str, dict[str, Any]] = (HR, {"offsets_ms": [i * 1000 for i in range(n)],
                                                         "bpm": [60.0 + (i % 40) for i in range(n)]})
    elif kind == ACC:
        measurement = (ACC, {"offsets_ms": [i * 40 for i in range(n)], "x": [0.1] * n, "y": [0.2] * n,
                             "z": [0.98] * n})
    else:
        measurement = (SLEEP, {"episodes": [{
            "start_offset_ms": 0, "end_offset_ms": 8 * 3_600_000, "total_sleep_time_min": 420.0,
            "wake_after_sleep_onset_min": 30.0, "latency_to_sleep_onset_min": 12.0,
            "number_of_awakenings": 3, "is_main_sleep": True}]})
    return {
        "block_id": block_id or str(uuid.uuid4()), "site_id": site, "participant_id": pid,
        "device_id": device, "sequence": seq, "start": start, "utc_offset_minutes": 60,
        "received_at": received_at if received_at is not None else start + 60_000, "measurement": measurement,
    }


def consent(pid: str = "P-000123", action: str = "GRANT", status: str | None = None, at: int = T0,
            site: str = "site-a", name: str | None = "Testa Synthetica", birth: date | None = date(1980, 5, 17),
            postcode: str | None = "SW1A 1AA", event_id: str | None = None,
            scope: list[str] | None = None) -> dict[str, Any]:
    """A raw BiobankEvent holding a ConsentEvent."""
    return {
        "event_id": event_id or str(uuid.uuid4()), "site_id": site, "participant_id": pid,
        "occurred_at": at, "recorded_at": at + 1000, "operator_name": "Opera Torrent",
        "operator_role": "research nurse", "comment": f"signed by {name}" if name else None,
        "payload": ("org.clinstream.biobank.ConsentEvent", {
            "action": action, "status": status or ("ACTIVE" if action == "GRANT" else "INACTIVE"),
            "scope": scope if scope is not None else ["DUO:0000042", "free text scope"],
            "participant_name": name, "birth_date": birth, "postcode": postcode}),
    }


def sample_event(pid: str = "P-000123", barcode: str = "BC-SYN-778899", at: int = T0, site: str = "site-a",
                 event_id: str | None = None, parent: str | None = "BC-SYN-PARENT-1") -> dict[str, Any]:
    """A raw BiobankEvent holding a SampleEvent with every identifying field filled."""
    return {
        "event_id": event_id or str(uuid.uuid4()), "site_id": site, "participant_id": pid,
        "occurred_at": at, "recorded_at": at + 500, "operator_name": "Opera Torrent",
        "operator_role": "Technician", "comment": "Testa Synthetica called about her sample",
        "payload": ("org.clinstream.biobank.SampleEvent", {
            "event_type": "DISPOSED", "sample_id": barcode, "parent_sample_id": parent, "sample_type": "PL2",
            "container": "PED", "quantity": 0.5, "quantity_unit": "mL", "temperature_c": -80.0,
            "centrifugation": {"g_force": 2000.0, "minutes": 10.0, "temperature_c": 4.0, "braking": True},
            "storage_location": "Freezer-7/Rack-3/Box-12/A4", "storage_band": "M60_TO_85",
            "freeze_thaw_count": 1, "qc_passed": True, "shipment_reference": "SHIP-SYN-42",
            "disposal_reason": "Requested by Testa Synthetica"}),
    }


def assay(pid: str = "P-000123", barcode: str = "BC-SYN-778899", at: int = T0, site: str = "site-a",
          event_id: str | None = None) -> dict[str, Any]:
    """A raw BiobankEvent holding an AssayResult."""
    return {
        "event_id": event_id or str(uuid.uuid4()), "site_id": site, "participant_id": pid,
        "occurred_at": at, "recorded_at": at + 500, "operator_name": None, "operator_role": None,
        "comment": None, "payload": ("org.clinstream.biobank.AssayResult", {
            "sample_id": barcode, "analyte": "CRP", "loinc_code": "1988-5", "value": 3.2, "unit": "mg/L"}),
    }


def encode_block(rec: dict[str, Any]) -> bytes:
    """Single-object bytes of a raw block."""
    return get_codec().encode(RAW_TELEMETRY.value_schema, rec)


def encode_event(rec: dict[str, Any]) -> bytes:
    """Single-object bytes of a raw biobank event."""
    return get_codec().encode(RAW_BIOBANK.value_schema, rec)


class Feed:
    """Builds InRecords with increasing offsets and timestamps, as a host would pass them."""

    def __init__(self, site: str = "site-a", partition: int = 0, ts: int = T0) -> None:
        self.site = site
        self.partition = partition
        self.offsets = {RAW_TELEMETRY.name(site): 0, RAW_BIOBANK.name(site): 0}
        self.ts = ts

    def _next(self, topic: str, key: bytes | None, value: bytes, ts: int | None) -> InRecord:
        offset = self.offsets[topic]
        self.offsets[topic] = offset + 1
        self.ts += 1
        return InRecord(topic, self.partition, offset, key, value, self.ts if ts is None else ts)

    def block(self, rec: dict[str, Any], ts: int | None = None, key: bytes | str | None = "auto") -> InRecord:
        """A raw telemetry InRecord."""
        k = subject_key(rec["site_id"], rec["participant_id"]) if key == "auto" else key
        assert not isinstance(k, str)
        return self._next(RAW_TELEMETRY.name(self.site), k, encode_block(rec), ts)

    def event(self, rec: dict[str, Any], ts: int | None = None) -> InRecord:
        """A raw biobank InRecord."""
        k = subject_key(rec["site_id"], rec["participant_id"])
        return self._next(RAW_BIOBANK.name(self.site), k, encode_event(rec), ts)

    def raw(self, topic_kind: str, value: bytes, key: bytes | None = None) -> InRecord:
        """An arbitrary value on the raw telemetry ('telemetry') or biobank topic."""
        topic = RAW_TELEMETRY.name(self.site) if topic_kind == "telemetry" else RAW_BIOBANK.name(self.site)
        return self._next(topic, key, value, None)
