"""Training examples of one site, built by SQL from its feature store: 7 days of wearables -> raised CRP or not.

One example per blood sample with a CRP result (LOINC 1988-5) in `sample_features_current`:

* lookback: the participant's day windows (`LOCAL_DAY` by default) that end at or before the collection instant
  and after `collected_at - lookback_days` (the 7 complete days before the sample; the collection day itself is
  excluded, it is not over yet);
* recent: the last `recent_days` of those;
* baseline: the `baseline_days` before the lookback (the participant's own normal), used when it has at least
  `baseline_min_days` days with data;
* label: CRP > threshold (5 mg/L by default).

Features are means over those days of resting HR, mean HR, ln RMSSD, ln SDNN, skin-temperature deviation from
its rolling baseline, ln steps, total sleep time, sleep efficiency and SpO2, plus deltas against the participant's
baseline. Missing values stay NaN here; the model imputes them with the (standardised) mean, i.e. 0.

Participants, not windows or samples, are split into train and test: participants are ordered by a salted
SHA-256 of their pseudonym and the first round(test_fraction * n) are held out, so every example of a person is
on one side and the held-out group has an exact size (which the minimum-cohort rule needs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from clinstream.core import constants as c
from clinstream.federated.config import TaskConfig

F64 = npt.NDArray[np.float64]

# Daily values taken from one day's rows of the feature sets (name, SQL expression over the grouped rows).
_DAILY: tuple[tuple[str, str], ...] = (
    ("rhr", "max((feature_values->>'resting')::float8) FILTER (WHERE feature_set = 'heart_rate')"),
    ("hr", "max((feature_values->>'mean')::float8) FILTER (WHERE feature_set = 'heart_rate')"),
    ("ln_rmssd", "max(ln(NULLIF((feature_values->>'rmssd')::float8, 0))) FILTER (WHERE feature_set = 'hrv')"),
    ("ln_sdnn", "max(ln(NULLIF((feature_values->>'sdnn')::float8, 0))) FILTER (WHERE feature_set = 'hrv')"),
    ("skin_dev", "max((feature_values->>'baseline_deviation')::float8)"
                 " FILTER (WHERE feature_set = 'skin_temperature')"),
    ("ln_steps", "max(ln(1 + (feature_values->>'total')::float8)) FILTER (WHERE feature_set = 'steps')"),
    ("sleep_min", "max((feature_values->>'total_sleep_time_min')::float8) FILTER (WHERE feature_set = 'sleep')"),
    ("sleep_eff", "max((feature_values->>'efficiency')::float8) FILTER (WHERE feature_set = 'sleep')"),
    ("spo2", "max((feature_values->>'mean')::float8) FILTER (WHERE feature_set = 'spo2')"),
)
# Daily values that also get a recent mean and deltas against the participant's baseline.
_WITH_BASELINE = ("rhr", "hr", "ln_rmssd", "ln_sdnn", "ln_steps", "sleep_min")


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for name, _ in _DAILY:
        names.append(f"{name}_mean")
        if name in _WITH_BASELINE:
            names += [f"{name}_recent", f"{name}_delta", f"{name}_recent_delta"]
    names.append("skin_dev_recent")
    names += ["has_baseline", "lookback_days_with_data"]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _feature_names()


def _query() -> str:
    daily = ",\n       ".join(f"{expr} AS {name}" for name, expr in _DAILY)
    windows = []
    for name, _ in _DAILY:
        windows.append(f"avg(d.{name}) FILTER (WHERE d.in_lookback) AS {name}_mean")
        if name in _WITH_BASELINE or name == "skin_dev":
            windows.append(f"avg(d.{name}) FILTER (WHERE d.in_recent) AS {name}_recent")
        if name in _WITH_BASELINE:
            windows.append(f"avg(d.{name}) FILTER (WHERE NOT d.in_lookback) AS {name}_base")
            windows.append(f"count(d.{name}) FILTER (WHERE NOT d.in_lookback) AS {name}_base_n")
    aggregates = ",\n       ".join(windows)
    day_columns = ", ".join(f"d.{name}" for name, _ in _DAILY)
    return f"""
WITH samples AS (
    SELECT sample_pseudonym, participant_pseudonym, collected_at, (assays->>%(loinc)s)::float8 AS crp
    FROM sample_features_current
    WHERE collected_at IS NOT NULL AND assays ? %(loinc)s
),
days AS (
    SELECT participant_pseudonym, window_end,
       max(completeness) FILTER (WHERE feature_set = 'heart_rate') AS completeness,
       {daily}
    FROM wearable_features_current
    WHERE window_kind = %(kind)s
      AND participant_pseudonym IN (SELECT participant_pseudonym FROM samples)
    GROUP BY participant_pseudonym, window_start, window_end
),
joined AS (
    SELECT s.sample_pseudonym, s.participant_pseudonym, s.crp, {day_columns},
           d.window_end > s.collected_at - %(lookback)s::interval AS in_lookback,
           d.window_end > s.collected_at - %(recent)s::interval AS in_recent
    FROM samples s
    JOIN days d ON d.participant_pseudonym = s.participant_pseudonym
     AND d.window_end <= s.collected_at
     AND d.window_end > s.collected_at - %(lookback)s::interval - %(baseline)s::interval
     AND coalesce(d.completeness, 0) >= %(min_completeness)s
)
SELECT d.sample_pseudonym, d.participant_pseudonym, d.crp,
       count(*) FILTER (WHERE d.in_lookback) AS lookback_n,
       {aggregates}
FROM joined d
GROUP BY d.sample_pseudonym, d.participant_pseudonym, d.crp
ORDER BY d.participant_pseudonym, d.sample_pseudonym
"""


_QUERY = _query()


@dataclass
class SiteDataset:
    """The examples of one site; `participants` (pseudonyms) never leave the site."""

    x: F64
    y: npt.NDArray[np.int8]
    participants: list[str]
    test: npt.NDArray[np.bool_]
    feature_names: tuple[str, ...] = FEATURE_NAMES

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self.y)

    def part(self, test: bool) -> tuple[F64, npt.NDArray[np.int8]]:
        """(x, y) of the test or the train participants."""
        mask = self.test if test else ~self.test
        return self.x[mask], self.y[mask]

    def participant_count(self, test: bool | None = None) -> int:
        """Distinct participants with examples (of the test or train side, or all)."""
        if test is None:
            return len(set(self.participants))
        mask = self.test if test else ~self.test
        return len({p for p, m in zip(self.participants, mask.tolist(), strict=True) if m})


def split_by_participant(participants: list[str], test_fraction: float, salt: str) -> set[str]:
    """The held-out participants: the first round(test_fraction * n) by salted SHA-256 of the pseudonym."""
    distinct = sorted(set(participants), key=lambda p: hashlib.sha256(f"{salt}:{p}".encode()).hexdigest())
    n_test = round(test_fraction * len(distinct))
    if len(distinct) >= 2:
        n_test = min(max(n_test, 1), len(distinct) - 1)
    return set(distinct[:n_test])


def _rows_to_examples(rows: list[tuple[Any, ...]], columns: list[str], cfg: TaskConfig) -> SiteDataset:
    col = {name: i for i, name in enumerate(columns)}
    keep = [r for r in rows if int(r[col["lookback_n"]]) >= cfg.min_lookback_days]

    def arr(name: str) -> F64:
        return np.array([np.nan if r[col[name]] is None else float(r[col[name]]) for r in keep], dtype=np.float64)

    feats: dict[str, F64] = {}
    has_base = np.zeros(len(keep), dtype=bool)
    for name, _ in _DAILY:
        feats[f"{name}_mean"] = arr(f"{name}_mean")
        if name in _WITH_BASELINE:
            base, base_n = arr(f"{name}_base"), arr(f"{name}_base_n")
            base = np.where(base_n >= cfg.baseline_min_days, base, np.nan)
            has_base |= np.isfinite(base)
            feats[f"{name}_recent"] = arr(f"{name}_recent")
            feats[f"{name}_delta"] = feats[f"{name}_mean"] - base
            feats[f"{name}_recent_delta"] = feats[f"{name}_recent"] - base
    feats["skin_dev_recent"] = arr("skin_dev_recent")
    feats["has_baseline"] = has_base.astype(np.float64)
    feats["lookback_days_with_data"] = arr("lookback_n") / cfg.lookback_days
    x = np.column_stack([feats[n] for n in FEATURE_NAMES]) if keep else np.empty((0, len(FEATURE_NAMES)))
    y = (arr("crp") > cfg.crp_threshold).astype(np.int8)
    participants = [str(r[col["participant_pseudonym"]]) for r in keep]
    held_out = split_by_participant(participants, cfg.test_fraction, cfg.split_salt)
    test = np.array([p in held_out for p in participants], dtype=bool)
    return SiteDataset(x, y, participants, test)


def load_site_dataset(conn: psycopg.Connection[Any], cfg: TaskConfig) -> SiteDataset:
    """Build the site's examples with one query over the feature views (search_path = the site schema)."""
    params = {
        "loinc": c.LOINC_CRP, "kind": cfg.window_kind, "min_completeness": cfg.min_completeness,
        "lookback": f"{cfg.lookback_days} days", "recent": f"{cfg.recent_days} days",
        "baseline": f"{cfg.baseline_days} days",
    }
    with conn.cursor() as cur:
        cur.execute(_QUERY, params)  # type: ignore[arg-type]
        columns = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    return _rows_to_examples(rows, columns, cfg)
