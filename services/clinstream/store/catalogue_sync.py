"""Writes the feature catalogue into the store's `feature_catalogue` table, so researchers can query it."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import psycopg

log = logging.getLogger(__name__)

CATALOGUE_MODULE = "clinstream.features.catalogue"
_COLUMNS = ("feature_set", "name", "unit", "windows", "version", "loinc", "definition")

_UPSERT = (
    "INSERT INTO feature_catalogue (feature_set, name, unit, windows, version, loinc, definition)"
    " VALUES (%(feature_set)s, %(name)s, %(unit)s, %(windows)s, %(version)s, %(loinc)s, %(definition)s)"
    " ON CONFLICT (feature_set, name, version) DO UPDATE SET unit = EXCLUDED.unit, windows = EXCLUDED.windows,"
    " loinc = EXCLUDED.loinc, definition = EXCLUDED.definition"
    " WHERE (feature_catalogue.unit, feature_catalogue.windows, feature_catalogue.loinc, feature_catalogue.definition)"
    " IS DISTINCT FROM (EXCLUDED.unit, EXCLUDED.windows, EXCLUDED.loinc, EXCLUDED.definition)"
)


def catalogue_rows() -> list[dict[str, Any]] | None:
    """The rows of `clinstream.features.catalogue.catalogue_rows()`, or None while that module does not exist."""
    try:
        module = importlib.import_module(CATALOGUE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and CATALOGUE_MODULE.startswith(exc.name):
            return None
        raise
    rows: list[Mapping[str, Any]] = module.catalogue_rows()
    return [{c: (list(r[c]) if c == "windows" else r.get(c)) for c in _COLUMNS} for r in rows]


def sync_catalogue(conn: psycopg.Connection[Any]) -> int | None:
    """Upsert the catalogue idempotently in the caller's transaction; rows changed, or None without a catalogue."""
    rows = catalogue_rows()
    if rows is None:
        log.warning("no feature catalogue module (%s) yet: feature_catalogue left as it is", CATALOGUE_MODULE)
        return None
    changed = 0
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(_UPSERT, row)
            changed += max(cur.rowcount, 0)
    return changed
