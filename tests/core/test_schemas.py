"""The schema catalogue: docs, naming, the lock, and real Avro resolution for compatibility."""

from __future__ import annotations

import copy
import json

import pytest

from clinstream.core.compat import IncompatibleSchema, check_catalogue, check_compatible, lint_schema
from clinstream.core.schemas import canonical, load_catalogue, parsed_standalone_of


def test_catalogue_passes_every_rule() -> None:
    assert check_catalogue(load_catalogue()) == []


def test_every_topic_schema_is_in_the_catalogue() -> None:
    from clinstream.core.topics import ALL_TOPICS

    cat = load_catalogue()
    for spec in ALL_TOPICS:
        assert spec.value_schema in cat.parsed


def _block_schema() -> dict:
    cat = load_catalogue()
    return json.loads(canonical(cat.parsed["org.clinstream.telemetry.TelemetryBlock"]))


def test_adding_an_optional_field_is_compatible() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"].append({"name": "firmware", "type": ["null", "string"], "default": None})
    check_compatible(json.dumps(old), json.dumps(new))


def test_removing_a_field_without_default_is_refused() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"] = [f for f in new["fields"] if f["name"] != "sequence"]
    with pytest.raises(IncompatibleSchema, match="old readers cannot read new data"):
        check_compatible(json.dumps(old), json.dumps(new))


def test_adding_a_required_field_is_refused() -> None:
    old = _block_schema()
    new = copy.deepcopy(old)
    new["fields"].append({"name": "firmware", "type": "string"})
    with pytest.raises(IncompatibleSchema, match="new schema cannot read old data"):
        check_compatible(json.dumps(old), json.dumps(new))


def test_lint_requires_docs_and_naming() -> None:
    problems: list[str] = []
    lint_schema("x.Bad", {"type": "record", "name": "bad_name", "fields": [
        {"name": "BadField", "type": "int"},
        {"name": "start_time", "type": "double", "doc": "seconds"},
    ]}, problems)
    text = "\n".join(problems)
    assert "PascalCase" in text and "has no doc" in text and "snake_case" in text
    assert "timestamp-millis" in text


def test_standalone_schemas_parse_alone() -> None:
    cat = load_catalogue()
    for name, parsed in cat.parsed.items():
        assert parsed_standalone_of(canonical(parsed)), name
