"""Enforces the schema rules: a doc everywhere, naming, and full compatibility with the released version."""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema

from clinstream.core.schemas import LOCK_FILE, Catalogue, canonical, read_lock

_RECORD_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ENUM_SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]*$")
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class IncompatibleSchema(ValueError):
    """Data written with one version of a schema cannot be read with another."""


def lint_schema(name: str, schema: Any, problems: list[str], path: str = "") -> None:
    """Collect naming and documentation problems of a raw (unparsed) schema."""
    where = f"{name}{path}"
    if isinstance(schema, list):
        for i, branch in enumerate(schema):
            lint_schema(name, branch, problems, f"{path}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed"):
        if not _RECORD_NAME.match(str(schema.get("name", ""))):
            problems.append(f"{where}: type name {schema.get('name')!r} must be PascalCase")
        if not str(schema.get("doc", "")).strip():
            problems.append(f"{where}: {kind} {schema.get('name')} has no doc")
    if kind == "enum":
        for sym in schema.get("symbols", []):
            if not _ENUM_SYMBOL.match(sym):
                problems.append(f"{where}: enum symbol {sym!r} must be UPPER_SNAKE_CASE")
    if kind == "record":
        for f in schema.get("fields", []):
            fpath = f"{path}.{f.get('name')}"
            if not _FIELD_NAME.match(str(f.get("name", ""))):
                problems.append(f"{name}{fpath}: field name must be snake_case")
            if not str(f.get("doc", "")).strip():
                problems.append(f"{name}{fpath}: field has no doc")
            if f.get("type") in ("float", "double") and re.search(r"(^|_)(time|at|start|end)$", f["name"]):
                problems.append(f"{name}{fpath}: instants must be timestamp-millis longs, not floating seconds")
            lint_schema(name, f.get("type"), problems, fpath)
    if kind == "array":
        lint_schema(name, schema.get("items"), problems, f"{path}[]")
    if kind == "map":
        lint_schema(name, schema.get("values"), problems, f"{path}{{}}")


class _Sampler:
    """Generates random data for a self-contained schema, walking every union branch over many draws."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.named: dict[str, Any] = {}

    def sample(self, schema: Any, namespace: str = "") -> Any:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self._primitive(schema)
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            target = self.named.get(full) or self.named.get(schema)
            if target is None:
                raise ValueError(f"unknown named type {schema}")
            return self.sample(target, namespace)
        if isinstance(schema, list):
            branch = self.rng.choice(schema)
            value = self.sample(branch, namespace)
            if isinstance(branch, dict) and branch.get("type") == "record":
                return (self._fullname(branch, namespace), value)
            if isinstance(branch, str) and branch not in _PRIMITIVES:
                full = branch if "." in branch else f"{namespace}.{branch}"
                return (full, value)
            return value
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            full = self._fullname(schema, namespace)
            self.named[full] = schema
            namespace = full.rsplit(".", 1)[0] if "." in full else namespace
        if kind == "record":
            return {f["name"]: self.sample(f["type"], namespace) for f in schema["fields"]}
        if kind == "enum":
            return self.rng.choice(schema["symbols"])
        if kind == "fixed":
            return bytes(self.rng.getrandbits(8) for _ in range(schema["size"]))
        if kind == "array":
            return [self.sample(schema["items"], namespace) for _ in range(self.rng.randint(0, 3))]
        if kind == "map":
            return {f"k{i}": self.sample(schema["values"], namespace) for i in range(self.rng.randint(0, 2))}
        if kind in _PRIMITIVES:
            return self._primitive(kind, schema.get("logicalType"))
        raise ValueError(f"unsupported schema {schema!r}")

    @staticmethod
    def _fullname(schema: dict[str, Any], namespace: str) -> str:
        name = str(schema["name"])
        ns = schema.get("namespace", namespace)
        return name if "." in name or not ns else f"{ns}.{name}"

    def _primitive(self, kind: str, logical: str | None = None) -> Any:
        r = self.rng
        if logical == "uuid":
            return f"00000000-0000-4000-8000-{r.getrandbits(48):012x}"
        makers: dict[str, Callable[[], Any]] = {
            "null": lambda: None,
            "boolean": lambda: r.random() < 0.5,
            "int": lambda: r.randint(-1000, 1000),
            "long": lambda: r.randint(0, 2**40),
            "float": lambda: float(r.randint(-100, 100)),
            "double": lambda: r.random() * 100,
            "bytes": lambda: bytes(r.getrandbits(8) for _ in range(r.randint(0, 8))),
            "string": lambda: f"s{r.randint(0, 10**6)}",
        }
        return makers[kind]()


def check_readable(writer_canonical: str, reader_canonical: str, draws: int = 64) -> None:
    """Write random data with the writer schema and read it with the reader schema (Avro resolution).

    Raises IncompatibleSchema if any draw cannot be resolved.
    """
    writer = parse_schema(json.loads(writer_canonical))
    reader = parse_schema(json.loads(reader_canonical))
    sampler_schema = json.loads(writer_canonical)
    for seed in range(draws):
        datum = _Sampler(seed).sample(sampler_schema)
        buf = io.BytesIO()
        schemaless_writer(buf, writer, datum)
        buf.seek(0)
        try:
            schemaless_reader(buf, writer, reader)
        except Exception as exc:
            raise IncompatibleSchema(f"{type(exc).__name__}: {exc}") from exc


def check_compatible(old_canonical: str, new_canonical: str) -> None:
    """Full compatibility: old data read with the new schema, and new data read with the old one."""
    try:
        check_readable(old_canonical, new_canonical)
    except IncompatibleSchema as exc:
        raise IncompatibleSchema(f"new schema cannot read old data ({exc})") from exc
    try:
        check_readable(new_canonical, old_canonical)
    except IncompatibleSchema as exc:
        raise IncompatibleSchema(f"old readers cannot read new data ({exc})") from exc


def _with_defaults(cat: Catalogue, name: str) -> str:
    """The current schema in full (defaults kept): the canonical form drops defaults, which resolution needs."""
    return json.dumps(cat.parsed[name], default=str)


def check_catalogue(cat: Catalogue, directory: Path | None = None) -> list[str]:
    """Every rule over the whole catalogue; an empty list means the catalogue is fine."""
    problems: list[str] = []
    lock = read_lock(directory)
    for name in sorted(cat.parsed):
        lint_schema(name, cat.raw[name], problems)
        current = canonical(cat.parsed[name])
        released = lock.get(name, [])
        if released and released[-1] != current:
            try:
                check_compatible(released[-1], _with_defaults(cat, name))
            except IncompatibleSchema as exc:
                problems.append(f"{name}: incompatible with its released version: {exc}")
                continue
        if not released or released[-1] != current:
            problems.append(f"{name}: not recorded in {LOCK_FILE}; run `clinstream schemas lock`")
    return problems


def lock_catalogue(cat: Catalogue, directory: Path) -> dict[str, int]:
    """Append the current version of every new or changed, compatible schema to the lock file."""
    lock = read_lock(directory)
    added: dict[str, int] = {}
    for name in sorted(cat.parsed):
        current = canonical(cat.parsed[name])
        released = lock.setdefault(name, [])
        if released and released[-1] == current:
            continue
        if released:
            check_compatible(released[-1], _with_defaults(cat, name))
        released.append(current)
        added[name] = len(released)
    (directory / LOCK_FILE).write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return added


