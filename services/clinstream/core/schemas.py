"""The Avro schema catalogue: loads schemas/*.avsc, resolves named types, and tracks released versions."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

Schema = dict[str, Any]

LOCK_FILE = "compat.lock.json"


def schemas_dir() -> Path:
    """Directory of the schema catalogue (CLINSTREAM_SCHEMAS_DIR, else the repository's schemas/)."""
    override = os.environ.get("CLINSTREAM_SCHEMAS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "schemas"


def fingerprint64(parsed: Schema) -> bytes:
    """The CRC-64-AVRO fingerprint of a parsed schema, as the 8 little-endian bytes of single-object encoding."""
    hex_digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return int(hex_digest, 16).to_bytes(8, "little")


@dataclass
class Catalogue:
    """Every schema of the catalogue, by full name, plus every released version by fingerprint."""

    raw: dict[str, Schema]
    parsed: dict[str, Schema]
    named: dict[str, Schema]
    by_fingerprint: dict[bytes, Schema] = field(default_factory=dict)
    fingerprint_of: dict[str, bytes] = field(default_factory=dict)

    def schema(self, name: str) -> Schema:
        """The current parsed schema of a full name, e.g. 'org.clinstream.telemetry.TelemetryBlock'."""
        try:
            return self.parsed[name]
        except KeyError:
            raise KeyError(f"unknown schema {name!r}; known: {sorted(self.parsed)}") from None


def _parse_all(raw: dict[str, Schema]) -> tuple[dict[str, Schema], dict[str, Schema]]:
    """Parse schemas in dependency order: retry until every reference resolves."""
    named: dict[str, Schema] = {}
    parsed: dict[str, Schema] = {}
    pending = dict(raw)
    while pending:
        progressed = False
        errors: dict[str, str] = {}
        for name, schema in list(pending.items()):
            trial = dict(named)
            try:
                parsed[name] = _parse(schema, trial)
            except Exception as exc:  # fastavro raises UnknownType / SchemaParseException
                errors[name] = str(exc)
                continue
            named.update(trial)
            del pending[name]
            progressed = True
        if not progressed:
            raise ValueError(f"unresolvable schemas: {errors}")
    return parsed, named


def _inline(schema: Any, named: dict[str, Schema], seen: set[str]) -> Any:
    """Replace references to named types by their definition at first use, so a schema stands alone."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            seen.add(schema)
            return _inline(named[schema], named, seen)
        return schema
    if isinstance(schema, list):
        return [_inline(b, named, seen) for b in schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            seen.add(str(schema.get("name")))
        out = dict(schema)
        if kind in ("record", "error"):
            out["fields"] = [{**f, "type": _inline(f["type"], named, seen)} for f in schema["fields"]]
        elif kind == "array":
            out["items"] = _inline(schema["items"], named, seen)
        elif kind == "map":
            out["values"] = _inline(schema["values"], named, seen)
        elif isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind in named):
            out["type"] = _inline(kind, named, seen)
        return out
    return schema


def _parse(schema: Any, named: dict[str, Schema] | None = None) -> Schema:
    """fastavro's parse_schema, narrowed to the record schemas clinstream uses."""
    parsed = parse_schema(schema, named_schemas=named) if named is not None else parse_schema(schema)
    if not isinstance(parsed, dict):
        raise ValueError("a catalogue schema must be a record")
    return parsed


def standalone(parsed: Schema, named: dict[str, Schema]) -> Schema:
    """A parsed schema with every named type it uses defined inside it."""
    return _parse(_inline(parsed, named, set()))


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Load every *.avsc of a directory, plus the released versions listed in its lock file."""
    directory = directory or schemas_dir()
    raw: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        full = f"{schema['namespace']}.{schema['name']}"
        if path.stem != full:
            raise ValueError(f"{path.name}: file must be named after the full name {full}.avsc")
        raw[full] = schema
    parsed, named = _parse_all(raw)
    parsed = {name: standalone(schema, named) for name, schema in parsed.items()}
    cat = Catalogue(raw=raw, parsed=parsed, named=named)
    for name, schema in parsed.items():
        fp = fingerprint64(schema)
        cat.by_fingerprint[fp] = schema
        cat.fingerprint_of[name] = fp
    for released in read_lock(directory).values():
        for canonical in released:
            old = _parse(json.loads(canonical))
            cat.by_fingerprint.setdefault(fingerprint64(old), old)
    return cat


def read_lock(directory: Path | None = None) -> dict[str, list[str]]:
    """Released versions, oldest first, as parsing canonical forms, by full name."""
    path = (directory or schemas_dir()) / LOCK_FILE
    if not path.exists():
        return {}
    data: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def canonical(parsed: Schema) -> str:
    """The Avro parsing canonical form of a parsed schema (self-contained: named types expanded)."""
    return str(to_parsing_canonical_form(parsed))


@lru_cache(maxsize=1)
def get_catalogue() -> Catalogue:
    """The process-wide catalogue, loaded once."""
    return load_catalogue()


def parsed_standalone_of(canonical_form: str) -> Schema:
    """Parse a self-contained canonical form without any other named types."""
    return _parse(json.loads(canonical_form))
