"""Decodes and validates a consumed batch of the store's topics into writer input and dead-letter rejections."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinstream.core.avro import Codec, DecodeError
from clinstream.core.dlq import Rejection
from clinstream.core.records import InRecord
from clinstream.core.timeutil import from_ms
from clinstream.core.topics import ERASURE, FEATURES, SAMPLE_FEATURES
from clinstream.store.writer import Erasure

WEARABLE = "wearable"
SAMPLE = "sample"
ERASE = "erasure"


@dataclass(frozen=True, slots=True)
class Item:
    """One valid consumed record: where it came from, its kind and the decoded record (or erasure)."""

    source: InRecord
    kind: str
    record: Any


@dataclass(slots=True)
class DecodedBatch:
    """A consumed batch split by kind, with the records that go to the dead-letter topic."""

    items: list[Item] = field(default_factory=list)
    rejected: list[tuple[InRecord, Rejection]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Item]:
        """The valid items of one kind, in consumption order."""
        return [i for i in self.items if i.kind == kind]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and value != "" and "\x00" not in value


def _check_names(rec: Mapping[str, Any], site_id: str, names: Sequence[str]) -> Rejection | None:
    """A record of another site, or one whose named text fields are empty or invalid."""
    if rec["site_id"] != site_id:
        return Rejection("record of another site", "site_id")
    for name in names:
        if not _nonempty(rec[name]):
            return Rejection(f"empty or invalid {name}", name)
    return None


def _check_revision(rec: Mapping[str, Any]) -> Rejection | None:
    if rec["revision"] < 0 or rec["version"] < 1:
        return Rejection("negative revision or version below 1", "revision")
    return None


def check_feature(rec: Mapping[str, Any], site_id: str) -> Rejection | None:
    """Why a decoded FeatureRecord cannot be stored, or None."""
    if problem := _check_names(rec, site_id, ("participant_pseudonym", "feature_set")):
        return problem
    if rec["window_end"] <= rec["window_start"]:
        return Rejection("window does not end after it starts", "window_end")
    if not _finite(rec["completeness"]) or not 0.0 <= rec["completeness"] <= 1.0:
        return Rejection("completeness outside [0, 1]", "completeness")
    values = rec["values"]  # an Avro map of doubles: str keys, float values (checked in C, not per item in Python)
    if not all(map(math.isfinite, values.values())):
        return Rejection("non-finite feature value", "values")
    if "" in values or "\x00" in "".join(values):
        return Rejection("empty or invalid feature name", "values")
    return _check_revision(rec)


def check_sample(rec: Mapping[str, Any], site_id: str) -> Rejection | None:
    """Why a decoded SampleFeatureRecord cannot be stored, or None."""
    if problem := _check_names(rec, site_id, ("participant_pseudonym", "sample_pseudonym", "sample_type", "status")):
        return problem
    for name in ("parent_sample_pseudonym", "sprec"):
        if rec.get(name) is not None and not _nonempty(rec[name]):
            return Rejection(f"invalid {name}", name)
    for name in ("collection_to_centrifugation_min", "collection_to_freezing_min"):
        if rec.get(name) is not None and not _finite(rec[name]):
            return Rejection(f"non-finite {name}", name)
    if rec["freeze_thaw_count"] < 0 or rec["temperature_excursions"] < 0:
        return Rejection("negative count", "freeze_thaw_count")
    assays = rec.get("assays") or {}
    if not all(_finite(v) for v in assays.values()) or not all(_nonempty(k) for k in assays):
        return Rejection("invalid assay value or code", "assays")
    return _check_revision(rec)


def check_erasure(rec: Mapping[str, Any], site_id: str) -> Rejection | None:
    """Why a decoded ErasureRequest cannot be honoured, or None."""
    return _check_names(rec, site_id, ("participant_pseudonym",))


class BatchDecoder:
    """Turns consumed records of the site's feature and erasure topics into validated items."""

    def __init__(self, codec: Codec, site_id: str) -> None:
        self.codec = codec
        self.site_id = site_id
        self._kinds: dict[str, tuple[str, str]] = {
            FEATURES.name(site_id): (WEARABLE, FEATURES.value_schema),
            SAMPLE_FEATURES.name(site_id): (SAMPLE, SAMPLE_FEATURES.value_schema),
            ERASURE.name(site_id): (ERASE, ERASURE.value_schema),
        }

    @property
    def topics(self) -> list[str]:
        """The topics the store consumes."""
        return list(self._kinds)

    def _decode(self, value: bytes, schema: str, kind: str) -> dict[str, Any]:
        """Feature records decode without logical types (instants as epoch-ms ints, which the writer's rows convert
        once); erasure requests with them (their UUID and instant are used as objects)."""
        decode = self.codec.decode if kind == ERASE else self.codec.decode_plain
        if self.codec.writer_name(value) == schema:
            return decode(value)
        return decode(value, reader=schema)  # an older writer version, or a wrong record type

    def original_bytes(self, rec: InRecord) -> bytes:
        """What a dead letter of the record carries: its bytes, or its record encoded if it was handed over."""
        if rec.value or rec.record is None:
            return rec.value
        return self.codec.encode_plain(self._kinds[rec.topic][1], rec.record)

    def decode(self, records: Iterable[InRecord]) -> DecodedBatch:
        """Decode and validate; every record ends up either as an item or as a rejection."""
        out = DecodedBatch()
        for rec in records:
            kind_schema = self._kinds.get(rec.topic)
            if kind_schema is None:
                out.rejected.append((rec, Rejection("topic not consumed by the store")))
                continue
            kind, schema = kind_schema
            if rec.record is not None and kind == WEARABLE:  # handed over in process, never encoded (a replay's)
                decoded = rec.record
            elif not rec.value:
                out.rejected.append((rec, Rejection("empty value")))
                continue
            else:
                try:
                    decoded = self._decode(rec.value, schema, kind)
                except DecodeError as exc:
                    out.rejected.append((rec, Rejection(str(exc))))
                    continue
            if kind == WEARABLE:
                problem = check_feature(decoded, self.site_id)
                item: Any = decoded
            elif kind == SAMPLE:
                problem = check_sample(decoded, self.site_id)
                item = decoded
            else:
                problem = check_erasure(decoded, self.site_id)
                requested = decoded["requested_at"]
                item = Erasure(decoded["request_id"], decoded["participant_pseudonym"],
                               requested if not isinstance(requested, int) else from_ms(requested))
            if problem is not None:
                out.rejected.append((rec, problem))
            else:
                out.items.append(Item(rec, kind, item))
        return out


def records_of(items: Sequence[Item]) -> list[Any]:
    """The decoded records (or erasures) of items."""
    return [i.record for i in items]
