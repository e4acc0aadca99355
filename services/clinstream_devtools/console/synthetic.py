"""A synthetic cohort's feature rows, in the store writer's row shape, COPYed into a fresh site (demo, tests, bench)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from clinstream.core.timeutil import DAY_MS, HOUR_MS, from_ms
from clinstream.features.catalogue import HEART_RATE, HRV, SKIN_TEMPERATURE, SLEEP, SPO2, STEPS
from clinstream.store.writer import INSTANT_COLUMNS, SAMPLE_COLUMNS, WEARABLE_COLUMNS, sample_row, wearable_row

SPRECS = ("SER-SST-A-D-N-A-E", "PL1-PED-A-B-N-A-E", "PL2-PED-C-B-B-A-E", "URN-ZZZ-A-N-N-A-D")
_SAMPLE_TYPES = ("SER", "PL1", "PL2", "URN")


@dataclass(frozen=True, slots=True)
class Cohort:
    """How many synthetic people, over which UTC days, from which seed."""

    participants: int
    first_day: datetime
    days: int
    seed: int = 0

    def pseudonym(self, n: int) -> str:
        """The synthetic participant's 64-hex pseudonym (a hash of seed and index: nobody real)."""
        return hashlib.sha256(f"synthetic-{self.seed}-{n}".encode()).hexdigest()


def _hour_values(rng: np.random.Generator, wear: float, hour: int) -> tuple[dict[str, dict[str, float]], float]:
    diurnal = 8.0 * np.sin((hour - 9) / 24 * 2 * np.pi)
    hr = float(rng.normal(68 + diurnal, 3))
    completeness = float(np.clip(rng.normal(wear, 0.1), 0.0, 1.0))
    values = {
        HEART_RATE: {"mean": hr, "min": hr - 12, "max": hr + 25, "sd": float(rng.uniform(4, 9)),
                     "count": round(720 * completeness)},
        HRV: {"sdnn": float(rng.normal(48, 8)), "rmssd": float(rng.normal(38, 9)), "pnn50": float(rng.uniform(5, 30)),
              "n_intervals": round(3600 * completeness)},
        STEPS: {"total": float(max(0, rng.normal(400 + 300 * (8 <= hour <= 20), 150))),
                "active_minutes": float(rng.integers(0, 12))},
        SPO2: {"mean": float(rng.normal(96.5, 1)), "min": float(rng.normal(93, 1.5)),
               "minutes_below_90": float(rng.poisson(0.2))},
        SKIN_TEMPERATURE: {"mean": float(rng.normal(33.2 - 0.6 * np.cos(hour / 24 * 2 * np.pi), 0.3))},
    }
    return values, completeness


def _record(pseudonym: str, feature_set: str, window: str, start_ms: int, length_ms: int, values: dict[str, float],
            completeness: float, is_final: bool) -> dict[str, Any]:
    return {"participant_pseudonym": pseudonym, "feature_set": feature_set, "window": window,
            "window_start": start_ms, "window_end": start_ms + length_ms, "utc_offset_minutes": 0, "version": 1,
            "values": values, "completeness": completeness, "is_final": is_final, "revision": 1,
            "computed_at": start_ms + length_ms + 60_000}


def participant_records(cohort: Cohort, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One participant's HOUR, DAY and LOCAL_DAY wearable records and biobank sample records."""
    rng = np.random.default_rng([cohort.seed, n])
    who = cohort.pseudonym(n)
    wear = float(rng.beta(6, 2))
    first_ms = int(cohort.first_day.timestamp() * 1000)
    wearable: list[dict[str, Any]] = []
    for day in range(cohort.days):
        day_ms = first_ms + day * DAY_MS
        final = day < cohort.days - 1
        hours = [_hour_values(rng, wear, h) for h in range(24)]
        for h, (values, completeness) in enumerate(hours):
            for name, vals in values.items():
                wearable.append(_record(who, name, "HOUR", day_ms + h * HOUR_MS, HOUR_MS, vals, completeness, final))
        day_completeness = float(np.mean([c for _, c in hours]))
        for name in (HEART_RATE, HRV, STEPS, SPO2, SKIN_TEMPERATURE):
            keys = hours[0][0][name].keys()
            vals = {k: float(np.mean([v[name][k] for v, _ in hours])) for k in keys}
            if name == STEPS:
                vals = {k: float(sum(v[name][k] for v, _ in hours)) for k in keys}
            if name == HEART_RATE:
                vals["resting"] = vals["mean"] - 9
            wearable.append(_record(who, name, "DAY", day_ms, DAY_MS, vals, day_completeness, final))
        tst = float(np.clip(rng.normal(420, 45), 180, 600))
        tib = tst / float(rng.uniform(0.8, 0.95))
        wearable.append(_record(who, SLEEP, "LOCAL_DAY", day_ms, DAY_MS,
                                {"total_sleep_time_min": tst, "time_in_bed_min": tib, "efficiency": tst / tib,
                                 "episodes": 1.0}, day_completeness, final))
    samples: list[dict[str, Any]] = []
    kind = int(rng.integers(0, len(SPRECS)))
    collected = first_ms + int(rng.integers(0, max(1, cohort.days) * DAY_MS))
    parent = f"{who[:16]}s0"
    for i in range(int(rng.integers(1, 4))):
        samples.append({"participant_pseudonym": who, "sample_pseudonym": f"{who[:16]}s{i}",
                        "parent_sample_pseudonym": None if i == 0 else parent, "sample_type": _SAMPLE_TYPES[kind],
                        "collected_at": collected, "collection_to_centrifugation_min": float(rng.uniform(20, 150)),
                        "collection_to_freezing_min": float(rng.uniform(60, 300)), "sprec": SPRECS[kind],
                        "freeze_thaw_count": int(rng.integers(0, 3)), "temperature_excursions": 0,
                        "status": "available", "assays": {"1988-5": float(rng.lognormal(0.5, 0.8))}, "version": 1,
                        "revision": 1, "computed_at": collected + DAY_MS})
    return wearable, samples


def _chunks(cohort: Cohort, per_batch: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    wearable: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for n in range(cohort.participants):
        w, s = participant_records(cohort, n)
        wearable.extend(w)
        samples.extend(s)
        if len(wearable) >= per_batch:
            yield wearable, samples
            wearable, samples = [], []
    if wearable or samples:
        yield wearable, samples


def _copy(cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table),
                                                     sql.SQL(", ").join(map(sql.Identifier, columns)))
    instants = [c in INSTANT_COLUMNS for c in columns]  # the writer's rows carry them as epoch ms (its staging form)
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(tuple(Jsonb(v) if isinstance(v, dict) else from_ms(v) if instant and v is not None else v
                                 for v, instant in zip(row, instants, strict=True)))


def fill_store(conn: psycopg.Connection[Any], cohort: Cohort, per_batch: int = 50_000) -> int:
    """COPY the cohort into a fresh site's tables (rows as StoreWriter builds them, instants as timestamps), one
    commit per batch."""
    written = 0
    for wearable, samples in _chunks(cohort, per_batch):
        with conn.cursor() as cur:
            _copy(cur, "wearable_features", WEARABLE_COLUMNS, [wearable_row(r) for r in wearable])
            _copy(cur, "sample_features", SAMPLE_COLUMNS, [sample_row(r) for r in samples])
        conn.commit()
        written += len(wearable)
    return written


def default_first_day(days: int) -> datetime:
    """The UTC midnight `days` days before today's, so the newest synthetic day is yesterday."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return datetime.fromtimestamp(today.timestamp() - days * 86_400, UTC)
