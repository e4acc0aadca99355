"""Final features of the pure processor against an independent pandas / numpy / hrv-analysis computation.

Tolerances (absolute): heart rate, SpO2 mean/min/max/SD 1e-4 (inputs are 0.1-grid values stored as Avro float,
the processor quantises to 1e-3); skin temperature 1e-4 degC; RR statistics 1e-6 ms (integer-ms inputs are exact);
pNN50 1e-9 %; counts, steps, active minutes, minutes below 90 %, completeness and resting heart rate exact;
sleep times 1e-6 min.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from features_factories import DAY, MIN, T0, block, clock_block, decoded, generate, in_records, pseudonym
from features_factories import run as run_any_version
from features_factories import skin_body as skin
from hrv_reference import time_domain_features

from clinstream.core.records import OutRecord

KINDS = {"MINUTE": "min", "HOUR": "h", "DAY": "D"}


def run(*args: Any, **kwargs: Any) -> Any:
    """These tests pin feature version 1's definitions (kept selectable so old rows stay reproducible)."""
    return run_any_version(*args, version=1, **kwargs)


def _window(ts: pd.Series, off_min: pd.Series, kind: str) -> pd.Series:
    if kind == "LOCAL_DAY":
        off = pd.to_timedelta(off_min, unit="m")
        return (ts + off).dt.floor("D") - off
    return ts.dt.floor(KINDS[kind])


def _frame(blocks: list[Any], measurement: str, value_field: str) -> pd.DataFrame:
    rows = []
    for b in blocks:
        name, body = b.record["measurement"]
        if not name.endswith(measurement):
            continue
        for i, (o, v) in enumerate(zip(body["offsets_ms"], body[value_field], strict=True)):
            rows.append((b.participant, b.record["block_id"], i, b.record["start"] + o, np.float32(v).item(),
                         b.record["utc_offset_minutes"]))
    df = pd.DataFrame(rows, columns=["p", "block", "i", "t_ms", "v", "off"])
    df["ts"] = pd.to_datetime(df["t_ms"], unit="ms", utc=True)
    return df


def _features(outs: list[OutRecord]) -> dict[tuple[str, str, str, pd.Timestamp], dict[str, Any]]:
    result = {}
    for rec, _ in decoded(outs):
        if rec["is_final"]:
            result[(rec["participant_pseudonym"], rec["feature_set"], rec["window"],
                    pd.Timestamp(rec["window_start"]))] = rec
    return result


@pytest.fixture(scope="module")
def computed() -> tuple[Any, dict[tuple[str, str, str, pd.Timestamp], dict[str, Any]]]:
    data = generate(n_participants=2, hours=27, seed=11, offsets_min=(-330, 120))
    last = max(b.record["received_at"] for b in data.blocks)
    outs, _ = run(in_records([*data.blocks, clock_block(last)]), batch=700)
    return data, _features(outs)


def _check(features: dict[Any, dict[str, Any]], fs: str,
           expected: dict[tuple[str, str, pd.Timestamp], dict[str, float]], tol: dict[str, float]) -> None:
    kinds = {k for (_, k, _) in expected}
    got_keys = {(p, k, ws) for (p, s, k, ws) in features if s == fs and k in kinds}
    assert got_keys == set(expected), f"{fs}: windows differ"
    for (p, kind, ws), values in expected.items():
        rec = features[(p, fs, kind, ws)]
        assert set(rec["values"]) == set(values), (fs, kind, sorted(rec["values"]), sorted(values))
        for name, want in values.items():
            assert rec["values"][name] == pytest.approx(want, abs=tol.get(name, 0.0)), (fs, kind, name)


def test_heart_rate_and_completeness(computed: Any) -> None:
    data, features = computed
    df = _frame(data.blocks, "HeartRateSamples", "bpm")
    df = df[(df.v >= 20) & (df.v <= 250)]
    for kind, minutes in (("MINUTE", 1), ("HOUR", 60), ("DAY", 1440), ("LOCAL_DAY", 1440)):
        df["ws"] = _window(df.ts, df.off, kind)
        expected: dict[tuple[str, str, pd.Timestamp], dict[str, float]] = {}
        worn = df.assign(minute=df.ts.dt.floor("min")).groupby(["p", "ws"]).minute.nunique()
        for (p, ws), g in df.groupby(["p", "ws"]):
            values = {"mean": g.v.mean(), "min": g.v.min(), "max": g.v.max(), "count": float(len(g))}
            if len(g) > 1:
                values["sd"] = g.v.std(ddof=1)
            if kind in ("DAY", "LOCAL_DAY"):
                values["resting"] = float(np.percentile(np.floor(g.v.to_numpy() + 0.5), 10, method="inverted_cdf"))
            expected[(p, kind, ws)] = values
            rec = features[(p, "heart_rate", kind, ws)]
            assert rec["completeness"] == worn[(p, ws)] / minutes
        _check(features, "heart_rate", expected, {"mean": 1e-4, "min": 1e-4, "max": 1e-4, "sd": 1e-4})
    # every other set's row carries its window's wear share too
    hr = {(p, k, ws): r["completeness"] for (p, s, k, ws), r in features.items() if s == "heart_rate"}
    for (p, s, k, ws), rec in features.items():
        assert rec["completeness"] == hr.get((p, k, ws), 0.0), (s, k)
    assert any(0 < c < 1 for c in hr.values())


def test_hrv_against_hrv_analysis(computed: Any) -> None:
    data, features = computed
    df = _frame(data.blocks, "RRIntervalSamples", "rr_ms").sort_values(["block", "i"], kind="stable")
    df["valid"] = (df.v >= 300) & (df.v <= 2000)
    for kind in ("MINUTE", "HOUR", "DAY", "LOCAL_DAY"):
        df["ws"] = _window(df.ts, df.off, kind)
        # contiguous runs of valid intervals of one block inside one window
        new_run = (~df.valid) | (df.block != df.block.shift()) | (df.ws != df.ws.shift())
        df["run"] = new_run.cumsum()
        nn = df[df.valid]
        expected: dict[tuple[str, str, pd.Timestamp], dict[str, float]] = {}
        for (p, ws), g in nn.groupby(["p", "ws"]):
            values = {"n_intervals": float(len(g))}
            if len(g) > 1:
                values["sdnn"] = float(np.std(g.v.to_numpy(), ddof=1))
            nd = ssd = n50 = 0.0
            for _, r in g.groupby("run"):
                if len(r) >= 2:
                    f = time_domain_features(r.v.tolist())
                    nd += len(r) - 1
                    ssd += f["rmssd"] ** 2 * (len(r) - 1)
                    n50 += f["nni_50"]
            if nd:
                values["rmssd"] = float(np.sqrt(ssd / nd))
                values["pnn50"] = 100 * n50 / nd
            expected[(p, kind, ws)] = values
        _check(features, "hrv", expected, {"sdnn": 1e-6, "rmssd": 1e-6, "pnn50": 1e-9})


def test_steps_spo2_skin(computed: Any) -> None:
    data, features = computed
    steps = _frame(data.blocks, "StepCountSamples", "steps")
    spo2 = _frame(data.blocks, "OxygenSaturationSamples", "spo2_percent")
    skin_df = _frame(data.blocks, "SkinTemperatureSamples", "celsius")
    steps["minute"] = steps.ts.dt.floor("min")
    per_minute = steps.groupby(["p", "minute", "off"], as_index=False).v.sum()
    spo2["minute"] = spo2.ts.dt.floor("min")
    for kind in ("MINUTE", "HOUR", "DAY", "LOCAL_DAY"):
        steps["ws"] = _window(steps.ts, steps.off, kind)
        per_minute["ws"] = _window(per_minute.minute, per_minute.off, kind)
        active = per_minute[per_minute.v >= 60].groupby(["p", "ws"]).size()
        total = steps.groupby(["p", "ws"]).v.sum()
        expected = {(p, kind, ws): {"total": float(t), "active_minutes": float(active.get((p, ws), 0))}
                    for (p, ws), t in total.items()}
        _check(features, "steps", expected, {})
        spo2["ws"] = _window(spo2.ts, spo2.off, kind)
        low = spo2[spo2.v < 90].groupby(["p", "ws"]).minute.nunique()
        stats = spo2.groupby(["p", "ws"]).v.agg(["mean", "min"])
        expected = {(p, kind, ws): {"mean": row["mean"], "min": row["min"],
                                    "minutes_below_90": float(low.get((p, ws), 0))}
                    for (p, ws), row in stats.iterrows()}
        _check(features, "spo2", expected, {"mean": 1e-4, "min": 1e-4})
        skin_df["ws"] = _window(skin_df.ts, skin_df.off, kind)
        expected = {(p, kind, ws): {"mean": m} for (p, ws), m in skin_df.groupby(["p", "ws"]).v.mean().items()}
        _check(features, "skin_temperature", expected, {"mean": 1e-4})


def test_sleep_per_local_night(computed: Any) -> None:
    data, features = computed
    rows = []
    for b in data.blocks:
        name, body = b.record["measurement"]
        if name.endswith("SleepEpisodes"):
            for ep in body["episodes"]:
                rows.append((b.participant, b.record["start"] + ep["start_offset_ms"],
                             b.record["start"] + ep["end_offset_ms"], ep["total_sleep_time_min"],
                             b.record["utc_offset_minutes"]))
    df = pd.DataFrame(rows, columns=["p", "s", "e", "tst", "off"])
    df["ws"] = _window(pd.to_datetime(df.e, unit="ms", utc=True), df.off, "LOCAL_DAY")
    expected = {}
    for (p, ws), g in df.groupby(["p", "ws"]):
        tib = ((g.e - g.s) / MIN).sum()
        expected[(p, "LOCAL_DAY", ws)] = {"total_sleep_time_min": g.tst.sum(), "time_in_bed_min": tib,
                                          "efficiency": g.tst.sum() / tib, "episodes": float(len(g))}
    assert expected
    _check(features, "sleep", expected, {"total_sleep_time_min": 1e-6, "time_in_bed_min": 1e-6,
                                         "efficiency": 1e-9})


def test_skin_temperature_baseline_deviation() -> None:
    participant, device, off = pseudonym("P-000777"), pseudonym("DEV-777"), 60
    rng = np.random.default_rng(3)
    blocks, daily = [], {}
    for d in range(10):
        day_start = T0 + d * DAY - off * MIN  # local midnight
        if d == 4:
            continue  # a day without data
        temps = np.round(33 + 0.1 * d + rng.normal(0, 0.3, 24), 2)
        blocks.append(block(participant, device, d, day_start + 30 * MIN, "SkinTemperatureSamples",
                            skin(list(np.arange(24) * 3_600_000), temps), off))
        daily[d] = float(np.mean(temps.astype(np.float32).astype(np.float64)))
    outs, _ = run(in_records([*blocks, clock_block(T0 + 10 * DAY)]))
    finals = {int((pd.Timestamp(r["window_start"]).value // 10**6 + off * MIN - T0) // DAY): r
              for r, _ in decoded(outs) if r["is_final"] and r["window"] == "LOCAL_DAY"
              and r["feature_set"] == "skin_temperature"}
    for d, rec in finals.items():
        previous = [daily[x] for x in range(d - 7, d) if x in daily]
        if len(previous) >= 3:
            assert rec["values"]["baseline_deviation"] == pytest.approx(daily[d] - np.mean(previous), abs=1e-4)
        else:
            assert "baseline_deviation" not in rec["values"]
    assert sum("baseline_deviation" in r["values"] for r in finals.values()) == 6  # days 3, 5..9
