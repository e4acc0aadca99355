"""The console's read-only queries of the feature store (pseudonyms only; never credentials or raw topics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from clinstream.core.config import Settings
from clinstream.core.constants import CONSOLE_DB_POOL_MAX, CONSOLE_STATEMENT_TIMEOUT_MS, CONSOLE_TIMELINE_DAYS
from clinstream.features.catalogue import HEART_RATE, SLEEP, WEARABLE_SETS

# The tables and views the console may read; `assert_feature_store` refuses any other name.
CONSOLE_TABLES = frozenset({"wearable_features", "sample_features", "active_version", "erasure_audit"})
VALID_DAY_WEAR_H = 10.0  # NHANES: a valid day has at least 10 h of wear
_PSEUDONYM_CHARS = frozenset("0123456789abcdefs")


def open_pool(settings: Settings) -> ConnectionPool[Any]:
    """A small pool of read-only connections (read-only transactions, statement timeout, site schema first)."""
    options = (f"-c default_transaction_read_only=on -c statement_timeout={CONSOLE_STATEMENT_TIMEOUT_MS}"
               f" -c search_path={settings.db_schema},public")
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.database_url, min_size=1, max_size=CONSOLE_DB_POOL_MAX, open=True,
        kwargs={"options": options, "autocommit": True, "row_factory": dict_row, "connect_timeout": 5})
    return pool


def valid_pseudonym(text: str) -> bool:
    """A pseudonym as the store keeps them: lower-case hex (synthetic samples add 's'), 8-128 characters."""
    return 8 <= len(text) <= 128 and set(text) <= _PSEUDONYM_CHARS


@dataclass(frozen=True, slots=True)
class Freshness:
    """The newest window of one feature set and window kind, and when it was stored."""

    feature_set: str
    window_kind: str
    latest_window_end: datetime | None
    stored_at: datetime | None
    age_s: float | None


_FRESHNESS = """
SELECT k.feature_set, k.window_kind, w.window_end, w.stored_at, extract(epoch FROM now() - w.stored_at) AS age_s
FROM unnest(%s::text[], %s::text[]) AS k(feature_set, window_kind)
LEFT JOIN LATERAL (
    SELECT window_end, stored_at FROM wearable_features f
    WHERE f.feature_set = k.feature_set AND f.window_kind = k.window_kind
      AND f.version = (SELECT version FROM active_version)
    ORDER BY f.window_start DESC LIMIT 1) w ON true
ORDER BY 1, 2
"""


def freshness(conn: psycopg.Connection[Any]) -> list[Freshness]:
    """Per feature set and window kind: newest window (index-only walk of the newest rows)."""
    kinds = ("HOUR", "DAY", "LOCAL_DAY", "MINUTE")
    pairs = [(s, k) for s in WEARABLE_SETS for k in kinds]
    rows = conn.execute(_FRESHNESS, ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
    return [Freshness(r["feature_set"], r["window_kind"], r["window_end"], r["stored_at"],
                      float(r["age_s"]) if r["age_s"] is not None else None) for r in rows if r["window_end"]]


def erasures_by_day(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Erasures honoured per UTC day (counts only)."""
    return list(conn.execute("SELECT date_trunc('day', completed_at) AS day, count(*) AS erasures,"
                             " sum(rows_deleted) AS rows_deleted FROM erasure_audit GROUP BY 1 ORDER BY 1").fetchall())


_TIMELINE = """
SELECT feature_set, window_start, feature_values, completeness, is_final, revision
FROM wearable_features
WHERE participant_pseudonym = %(p)s AND version = (SELECT version FROM active_version)
  AND window_kind = %(kind)s AND window_start >= %(since)s
ORDER BY feature_set, window_start
"""


def newest_window(conn: psycopg.Connection[Any], pseudonym: str) -> datetime | None:
    """Start of the participant's newest wearable window (any set), or None without data."""
    row = conn.execute("SELECT max(window_start) AS newest FROM wearable_features WHERE participant_pseudonym = %s"
                       " AND version = (SELECT version FROM active_version)", (pseudonym,)).fetchone()
    return row["newest"] if row else None


def timelines(conn: psycopg.Connection[Any], pseudonym: str, newest: datetime,
              days: int = CONSOLE_TIMELINE_DAYS) -> dict[str, dict[str, list[Any]]]:
    """HOUR windows per set (sleep: LOCAL_DAY) of the last `days` days: times, values, completeness, is_final."""
    since = newest - timedelta(days=days)
    out: dict[str, dict[str, list[Any]]] = {}
    for kind in ("HOUR", "LOCAL_DAY"):
        for r in conn.execute(_TIMELINE, {"p": pseudonym, "kind": kind, "since": since}).fetchall():
            series = out.setdefault(r["feature_set"], {"t": [], "values": [], "completeness": [], "is_final": [],
                                                       "revision": []})
            series["t"].append(r["window_start"].isoformat())
            series["values"].append(r["feature_values"])
            series["completeness"].append(r["completeness"])
            series["is_final"].append(r["is_final"])
            series["revision"].append(r["revision"])
    return out


def samples(conn: psycopg.Connection[Any], pseudonym: str) -> list[dict[str, Any]]:
    """The participant's biobank samples (active version), parents before their aliquots."""
    return list(conn.execute(
        "SELECT sample_pseudonym, parent_sample_pseudonym, sample_type, collected_at, sprec,"
        " collection_to_centrifugation_min, collection_to_freezing_min, freeze_thaw_count, temperature_excursions,"
        " status, assays FROM sample_features WHERE participant_pseudonym = %s"
        " AND version = (SELECT version FROM active_version)"
        " ORDER BY coalesce(parent_sample_pseudonym, sample_pseudonym), parent_sample_pseudonym NULLS FIRST,"
        " sample_pseudonym", (pseudonym,)).fetchall())


_NEWEST_DAY = """
SELECT max(window_start) AS t FROM wearable_features
WHERE feature_set = %s AND window_kind = 'DAY' AND version = (SELECT version FROM active_version)
"""

_COHORT = """
SELECT participant_pseudonym, avg(completeness) AS completeness,
       count(*) FILTER (WHERE completeness * 24 >= %(valid_h)s) AS valid_days, count(*) AS days
FROM wearable_features
WHERE feature_set = %(hr)s AND window_kind = 'DAY' AND version = (SELECT version FROM active_version)
  AND window_start > %(since)s
GROUP BY participant_pseudonym
"""

_BY_SET = """
SELECT k.feature_set,
       percentile_cont(ARRAY[0.1, 0.25, 0.5, 0.75, 0.9]) WITHIN GROUP (ORDER BY f.completeness) AS q
FROM unnest(%(sets)s::text[], %(kinds)s::text[]) AS k(feature_set, window_kind)
JOIN LATERAL (
    SELECT completeness FROM wearable_features w
    WHERE w.feature_set = k.feature_set AND w.window_kind = k.window_kind
      AND w.version = (SELECT version FROM active_version) AND w.window_start > %(since)s) f ON true
GROUP BY k.feature_set ORDER BY k.feature_set
"""


def cohort_since(conn: psycopg.Connection[Any], days: int = CONSOLE_TIMELINE_DAYS) -> datetime | None:
    """Start of the cohort views' period: `days` before the newest heart-rate DAY window (None without data)."""
    row = conn.execute(_NEWEST_DAY, (HEART_RATE,)).fetchone()
    return row["t"] - timedelta(days=days) if row and row["t"] else None


def cohort(conn: psycopg.Connection[Any], since: datetime) -> list[dict[str, Any]]:
    """Per participant over the DAY windows after `since`: mean completeness, valid (>= 10 h wear) days, days."""
    return list(conn.execute(_COHORT, {"hr": HEART_RATE, "since": since, "valid_h": VALID_DAY_WEAR_H}).fetchall())


def completeness_by_set(conn: psycopg.Connection[Any], since: datetime) -> list[dict[str, Any]]:
    """Quantiles (10, 25, 50, 75, 90 %) of daily completeness per wearable feature set after `since`."""
    kinds = ["LOCAL_DAY" if s == SLEEP else "DAY" for s in WEARABLE_SETS]
    return list(conn.execute(_BY_SET, {"sets": list(WEARABLE_SETS), "kinds": kinds, "since": since}).fetchall())
