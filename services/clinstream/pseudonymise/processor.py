"""The pure pseudonymisation batch processor: raw records in; pseudonymised, consent-control and DLQ records out.

Per input record, in batch order (the host passes the records of one partition in offset order):

* raw telemetry block -> `PSEUDO_TELEMETRY` if the participant's consent allows it, else counted and dropped;
* raw biobank sample/assay event -> `PSEUDO_BIOBANK` under the same rule;
* raw consent event -> new state in the injected consent mapping (under the participant's pseudonym of every
  key version), `ConsentState` to `CONSENT`; a grant also goes to `PSEUDO_BIOBANK` (generalised) and to `AUDIT`;
  a withdrawal (or an active state ending) emits one `ErasureRequest` per key version to `ERASURE` and
  `AUDIT` records (consent withdrawn, erasure requested);
* anything undecodable or invalid -> the pseudonymise DLQ with its original bytes and a fixed reason.

Outputs are deterministic functions of the input record, the key ring and the consent state, so re-processing
after a crash yields byte-identical duplicates (dedupe by block_id / event_id / audit_id / request_id), except
DLQ records whose `failed_at` is the wall-clock time (dedupe those by source topic, partition and offset).

Fast path: a telemetry block written with the current TelemetryBlock schema is not fully re-encoded. Its header
fields are decoded with a prefix schema, the pseudonymised header is encoded with the output's prefix schema
and the measurement bytes (the last field, identical union in both schemas; numbers and enums only) are copied.
With `verify_measurements` (default) those bytes are still checked to reject corrupt blocks: matched by compiled
regular expressions (`MeasurementChecker`), without a Python object per reading; decoded with fastavro for sleep
episodes.
"""

from __future__ import annotations

import heapq
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from clinstream.core.avro import Codec, get_codec, prefix_schema, subject_key
from clinstream.core.constants import AVRO_SINGLE_OBJECT_MAGIC, PSEUDONYMISE_ID_NAMESPACE
from clinstream.core.dlq import Rejection, dead_letter
from clinstream.core.measurement_bytes import MeasurementChecker, MeasurementError
from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.timeutil import now_ms, to_ms
from clinstream.core.topics import (
    AUDIT,
    CONSENT,
    ERASURE,
    PSEUDO_BIOBANK,
    PSEUDO_TELEMETRY,
    RAW_BIOBANK,
    RAW_TELEMETRY,
    Stage,
    dlq,
)
from clinstream.pseudonymise.consent import ConsentEntry, consent_order
from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.minimise import CONSENT_EVENT, MinimisationError, duo_scope, minimise_biobank_event
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

TELEMETRY_BLOCK = RAW_TELEMETRY.value_schema
P_TELEMETRY_BLOCK = PSEUDO_TELEMETRY.value_schema
BIOBANK_EVENT = RAW_BIOBANK.value_schema
P_BIOBANK_EVENT = PSEUDO_BIOBANK.value_schema
CONSENT_STATE = CONSENT.value_schema
ERASURE_REQUEST = ERASURE.value_schema
AUDIT_RECORD = AUDIT.value_schema
_HEADER_LEN = 10
_NS = uuid.UUID(PSEUDONYMISE_ID_NAMESPACE)


class _Reject(Exception):  # internal control flow: a record goes to the DLQ
    def __init__(self, reason: str, field_path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field_path = field_path


def _read(buf: io.BytesIO, schema: Any, *, record_names: bool = False) -> Any:
    """Decode one schemaless Avro datum from a buffer (optionally with (name, record) union branches)."""
    return schemaless_reader(buf, schema, None, return_record_name=record_names,
                             return_record_name_override=record_names)


def measurement_readings(measurement: dict[str, Any]) -> int:
    """Readings in one decoded measurement record; raises _Reject if its arrays differ in length."""
    lengths = {len(v) for v in measurement.values() if isinstance(v, list)}
    if len(lengths) > 1:
        raise _Reject("measurement arrays differ in length", "measurement")
    return lengths.pop() if lengths else 0


def order_for_processing(records: Sequence[InRecord]) -> dict[int, list[InRecord]]:
    """Group a batch by partition; within one, merge the topics by record timestamp.

    Each topic-partition keeps its offset order (the merge is stable and never reorders one input), and
    records of a participant's two raw topics are interleaved by the time they entered Kafka, so a withdrawal
    fetched in the same batch as a later block of that participant is applied before that block.
    """
    by_tp: dict[int, dict[str, list[InRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        by_tp[rec.partition][rec.topic].append(rec)
    return {partition: list(heapq.merge(*topics.values(), key=lambda r: r.timestamp_ms))
            for partition, topics in sorted(by_tp.items())}


def audit_id(event_id: str, action: str) -> str:
    """Deterministic id of the audit record of an action caused by an event."""
    return str(uuid.uuid5(_NS, f"{event_id}/{action}"))


def erasure_request_id(event_id: str, key_version: int) -> str:
    """Deterministic id of the erasure request of a withdrawal for one key version's pseudonym."""
    return str(uuid.uuid5(_NS, f"{event_id}/erasure/v{key_version}"))


@dataclass(slots=True)
class _Block:
    participant_id: str
    header: dict[str, Any]
    tail: bytes
    readings: int  # -1: not counted (fast path without verification)


class PseudonymiseProcessor:
    """Pure batch processor of the pseudonymise stage over an injected consent-state mapping."""

    def __init__(self, site_id: str, key_ring: KeyRing, consent_state: MutableMapping[str, ConsentEntry], *,
                 codec: Codec | None = None, verify_measurements: bool = True,
                 clock: Callable[[], int] = now_ms) -> None:
        self.site_id = site_id
        self.consent_state = consent_state
        self.codec = codec or get_codec()
        self.verify_measurements = verify_measurements
        self._clock = clock
        self.raw_telemetry = RAW_TELEMETRY.name(site_id)
        self.raw_biobank = RAW_BIOBANK.name(site_id)
        self.pseudo_telemetry = PSEUDO_TELEMETRY.name(site_id)
        self.pseudo_biobank = PSEUDO_BIOBANK.name(site_id)
        self.consent_topic = CONSENT.name(site_id)
        self.erasure_topic = ERASURE.name(site_id)
        self.audit_topic = AUDIT.name(site_id)
        self.dlq_topic = dlq(Stage.PSEUDONYMISE).name(site_id)
        cat = self.codec.catalogue
        self._tel_fp = cat.fingerprint_of[TELEMETRY_BLOCK]
        self._bio_fp = cat.fingerprint_of[BIOBANK_EVENT]
        self._out_tel_header = AVRO_SINGLE_OBJECT_MAGIC + cat.fingerprint_of[P_TELEMETRY_BLOCK]
        in_fields = cat.parsed[TELEMETRY_BLOCK]["fields"]
        out_fields = cat.parsed[P_TELEMETRY_BLOCK]["fields"]
        if not (in_fields[-1]["name"] == out_fields[-1]["name"] == "measurement"
                and json.dumps(in_fields[-1]["type"], sort_keys=True)
                == json.dumps(out_fields[-1]["type"], sort_keys=True)):
            raise RuntimeError("raw and pseudonymised telemetry blocks must end in the same measurement union")
        self._in_prefix = prefix_schema(cat.raw[TELEMETRY_BLOCK], "clinstream.internal.RawBlockHeader")
        self._out_prefix = prefix_schema(cat.raw[P_TELEMETRY_BLOCK], "clinstream.internal.PseudoBlockHeader")
        self._measurement = parse_schema(in_fields[-1]["type"])
        self._checker = MeasurementChecker(in_fields[-1]["type"])
        self._raw_key = lru_cache(maxsize=65_536)(lambda pid: subject_key(site_id, pid))
        self._out_key = lru_cache(maxsize=65_536)(lambda pseud: subject_key(site_id, pseud))
        self._ring = key_ring
        self.pseudonymiser = Pseudonymiser(key_ring)

    # ---- key ring -------------------------------------------------------------------------------------
    @property
    def key_ring(self) -> KeyRing:
        """The ring whose active version signs new output."""
        return self._ring

    def set_key_ring(self, ring: KeyRing) -> None:
        """Use another ring from the next record on (hosts call this between batches)."""
        if ring is not self._ring and ring != self._ring:
            self.pseudonymiser = Pseudonymiser(ring)
        self._ring = ring

    # ---- batch ------------------------------------------------------------------------------------------
    def process(self, batch: Sequence[InRecord]) -> BatchResult:
        """Process records in order; never raises on bad input."""
        result = BatchResult()
        for rec in batch:
            if rec.topic == self.raw_telemetry:
                self._telemetry(rec, result)
            elif rec.topic == self.raw_biobank:
                self._biobank(rec, result)
            else:
                self._reject(rec, result, _Reject("record from a topic this stage does not read"))
        return result

    # ---- helpers ----------------------------------------------------------------------------------------
    def _reject(self, rec: InRecord, result: BatchResult, why: _Reject) -> None:
        key, value, headers = dead_letter(
            self.codec, site_id=self.site_id, stage=Stage.PSEUDONYMISE,
            rejection=Rejection(why.reason, why.field_path), original_value=rec.value, original_key=rec.key,
            content_type="application/avro", source_topic=rec.topic, source_partition=rec.partition,
            source_offset=rec.offset, now_ms=self._clock())
        result.out.append(OutRecord(self.dlq_topic, key, value, headers))
        result.count("dlq")

    def _check_common(self, rec: InRecord, site_id: str, participant_id: str) -> None:
        if site_id != self.site_id:
            raise _Reject("record of another site", "site_id")
        if not participant_id:
            raise _Reject("empty participant id", "participant_id")
        if rec.key is None:
            raise _Reject("record has no key (raw topics are keyed by participant)")
        if rec.key != self._raw_key(participant_id):
            raise _Reject("record key does not match its participant")

    def _check_envelope(self, value: bytes) -> bytes:
        if len(value) < _HEADER_LEN or value[:2] != AVRO_SINGLE_OBJECT_MAGIC:
            raise _Reject("not Avro single-object encoded (bad magic)")
        return bytes(value[2:_HEADER_LEN])

    def _consent_of(self, participant_id: str, pseudonym: str, result: BatchResult) -> ConsentEntry | None:
        """Consent state of a participant; state kept under an older key version is carried over."""
        entry = self.consent_state.get(pseudonym)
        if entry is not None:
            return entry
        p = self.pseudonymiser
        for version in sorted((v for v in p.versions if v != p.key_version), reverse=True):
            old = self.consent_state.get(p.participant(participant_id, version))
            if old is not None:
                entry = replace(old, key_version=p.key_version)
                self.consent_state[pseudonym] = entry
                self._emit_consent_state(pseudonym, entry, result)
                result.count("consent_migrated")
                return entry
        return None

    # ---- telemetry --------------------------------------------------------------------------------------
    def _parse_block(self, rec: InRecord) -> _Block:
        value = rec.value
        fp = self._check_envelope(value)
        if fp == self._tel_fp:
            buf = io.BytesIO(value)
            buf.seek(_HEADER_LEN)
            header: dict[str, Any] = _read(buf, self._in_prefix)
            tail = bytes(value[buf.tell():])
            readings = -1
            if self.verify_measurements:
                readings = self._check_measurement(tail)
        else:
            if self.codec.writer_name(value) != TELEMETRY_BLOCK:
                raise _Reject("unexpected schema on the raw telemetry topic")
            full = self.codec.decode(value, reader=TELEMETRY_BLOCK)
            header = {k: full[k] for k in ("block_id", "site_id", "participant_id", "device_id", "sequence",
                                           "utc_offset_minutes", "time_zone")}
            header["start"] = to_ms(full["start"])
            header["received_at"] = to_ms(full["received_at"])
            readings = measurement_readings(full["measurement"][1])
            out = io.BytesIO()
            schemaless_writer(out, self._measurement, full["measurement"])
            tail = out.getvalue()
        try:
            header["block_id"] = str(uuid.UUID(str(header["block_id"])))
        except ValueError:
            raise _Reject("block_id is not a UUID", "block_id") from None
        if not header["device_id"]:
            raise _Reject("empty device id", "device_id")
        self._check_common(rec, header["site_id"], header["participant_id"])
        return _Block(header["participant_id"], header, tail, readings)

    def _check_measurement(self, tail: bytes) -> int:
        """Readings of well-formed measurement bytes (`MeasurementChecker`; fastavro for branches it cannot check)."""
        try:
            readings = self._checker.readings(tail)
        except MeasurementError as err:
            raise _Reject(str(err), "measurement") from None
        if readings is not None:
            return readings
        tbuf = io.BytesIO(tail)
        measurement: tuple[str, dict[str, Any]] = _read(tbuf, self._measurement, record_names=True)
        if tbuf.tell() != len(tail):
            raise _Reject("trailing bytes after the measurement", "measurement")
        return measurement_readings(measurement[1])

    def _encode_block(self, blk: _Block, pseudonym: str) -> bytes:
        h = blk.header
        out = io.BytesIO()
        out.write(self._out_tel_header)
        schemaless_writer(out, self._out_prefix, {
            "block_id": h["block_id"], "site_id": h["site_id"], "participant_pseudonym": pseudonym,
            "device_pseudonym": self.pseudonymiser.device(h["device_id"]),
            "key_version": self.pseudonymiser.key_version, "sequence": h["sequence"], "start": h["start"],
            "utc_offset_minutes": h["utc_offset_minutes"], "time_zone": h.get("time_zone"),
            "received_at": h["received_at"],
        })
        out.write(blk.tail)
        return out.getvalue()

    def _telemetry(self, rec: InRecord, result: BatchResult) -> None:
        try:
            blk = self._parse_block(rec)
        except _Reject as why:
            self._reject(rec, result, why)
            return
        except Exception as exc:  # fastavro raises many types on corrupt bytes; never stop on bad input
            self._reject(rec, result, _Reject(f"undecodable telemetry block ({type(exc).__name__})"))
            return
        pseudonym = self.pseudonymiser.participant(blk.participant_id)
        entry = self._consent_of(blk.participant_id, pseudonym, result)
        if entry is None or not entry.allows(rec.timestamp_ms):
            result.count("dropped_no_consent_telemetry")
            return
        try:
            value = self._encode_block(blk, pseudonym)
        except Exception as exc:  # an out-of-range field the prefix decoder accepted
            self._reject(rec, result, _Reject(f"cannot encode pseudonymised block ({type(exc).__name__})"))
            return
        result.out.append(OutRecord(self.pseudo_telemetry, self._out_key(pseudonym), value))
        result.count("forwarded_telemetry")
        if blk.readings >= 0:
            result.count("readings_forwarded", blk.readings)

    # ---- biobank ----------------------------------------------------------------------------------------
    def _parse_event(self, rec: InRecord) -> dict[str, Any]:
        fp = self._check_envelope(rec.value)
        if fp != self._bio_fp and self.codec.writer_name(rec.value) != BIOBANK_EVENT:
            raise _Reject("unexpected schema on the raw biobank topic")
        ev = self.codec.decode(rec.value, reader=None if fp == self._bio_fp else BIOBANK_EVENT)
        self._check_common(rec, ev["site_id"], ev["participant_id"])
        return ev

    def _biobank(self, rec: InRecord, result: BatchResult) -> None:
        try:
            ev = self._parse_event(rec)
            pseudonym = self.pseudonymiser.participant(ev["participant_id"])
            minimised = minimise_biobank_event(ev, self.pseudonymiser, pseudonym)
            value = self.codec.encode(P_BIOBANK_EVENT, minimised)
        except _Reject as why:
            self._reject(rec, result, why)
            return
        except MinimisationError as err:
            self._reject(rec, result, _Reject(err.reason, err.field_path))
            return
        except Exception as exc:  # corrupt bytes or out-of-range values; never stop on bad input
            self._reject(rec, result, _Reject(f"invalid biobank event ({type(exc).__name__})"))
            return
        if ev["payload"][0] == CONSENT_EVENT:
            self._consent_event(rec, ev, pseudonym, value, result)
            return
        entry = self._consent_of(ev["participant_id"], pseudonym, result)
        if entry is None or not entry.allows(rec.timestamp_ms):
            result.count("dropped_no_consent_biobank")
            return
        result.out.append(OutRecord(self.pseudo_biobank, self._out_key(pseudonym), value))
        result.count("forwarded_biobank")

    # ---- consent ----------------------------------------------------------------------------------------
    def _emit_consent_state(self, pseudonym: str, entry: ConsentEntry, result: BatchResult) -> None:
        value = self.codec.encode(CONSENT_STATE, {
            "site_id": self.site_id, "participant_pseudonym": pseudonym, "key_version": entry.key_version,
            "active": entry.active, "scope": list(entry.scope), "event_id": entry.event_id,
            "updated_at": entry.updated_at_ms})
        result.out.append(OutRecord(self.consent_topic, self._out_key(pseudonym), value))

    def _emit_audit(self, pseudonym: str, event_id: str, action: str, at_ms: int, result: BatchResult) -> None:
        value = self.codec.encode(AUDIT_RECORD, {
            "audit_id": audit_id(event_id, action), "site_id": self.site_id,
            "participant_pseudonym": pseudonym, "action": action, "at": at_ms})
        result.out.append(OutRecord(self.audit_topic, self._out_key(pseudonym), value))

    def _emit_erasure(self, participant_id: str, event_id: str, requested_at: int, result: BatchResult) -> None:
        p = self.pseudonymiser
        for version in p.versions:
            pseud = p.participant(participant_id, version)
            value = self.codec.encode(ERASURE_REQUEST, {
                "request_id": erasure_request_id(event_id, version), "site_id": self.site_id,
                "participant_pseudonym": pseud, "key_version": version, "requested_at": requested_at})
            result.out.append(OutRecord(self.erasure_topic, self._out_key(pseud), value))
            result.count("erasure_requests")
        self._emit_audit(p.participant(participant_id), event_id, "ERASURE_REQUESTED", requested_at, result)

    def _consent_event(self, rec: InRecord, ev: dict[str, Any], pseudonym: str, value: bytes,
                       result: BatchResult) -> None:
        participant_id: str = ev["participant_id"]
        payload = ev["payload"][1]
        event_id = str(ev["event_id"])
        occurred = to_ms(ev["occurred_at"])
        requested_at = rec.timestamp_ms if rec.timestamp_ms > 0 else to_ms(ev["recorded_at"])
        grants = payload["action"] == "GRANT" and payload["status"] == "ACTIVE"
        current = self._consent_of(participant_id, pseudonym, result)
        withdraws = payload["action"] == "WITHDRAW" or (current is not None and current.active and not grants)
        if current is not None and consent_order(occurred, grants, event_id) < current.order():
            # An older event than the one that set the state: keep the state; keep the audit trail complete.
            result.count("consent_stale")
            if grants:
                self._emit_audit(pseudonym, event_id, "CONSENT_GRANTED", occurred, result)
            elif withdraws:
                self._emit_audit(pseudonym, event_id, "CONSENT_WITHDRAWN", occurred, result)
                self._emit_erasure(participant_id, event_id, requested_at, result)
            return
        if grants:
            keep_since = current is not None and current.active
            since = current.since_ms if current is not None and keep_since else max(rec.timestamp_ms, 0)
        else:
            since = 0
        entry = ConsentEntry(active=grants, since_ms=since, updated_at_ms=occurred, event_id=event_id,
                             key_version=self.pseudonymiser.key_version,
                             scope=tuple(duo_scope(payload.get("scope") or [])))
        p = self.pseudonymiser
        for version in p.versions:
            pseud = pseudonym if version == p.key_version else p.participant(participant_id, version)
            versioned = replace(entry, key_version=version)
            self.consent_state[pseud] = versioned
            self._emit_consent_state(pseud, versioned, result)
        if grants:
            result.out.append(OutRecord(self.pseudo_biobank, self._out_key(pseudonym), value))
            self._emit_audit(pseudonym, event_id, "CONSENT_GRANTED", occurred, result)
            result.count("consent_granted")
        elif withdraws:
            self._emit_audit(pseudonym, event_id, "CONSENT_WITHDRAWN", occurred, result)
            self._emit_erasure(participant_id, event_id, requested_at, result)
            result.count("consent_withdrawn")
        else:
            result.count("consent_inactive")
