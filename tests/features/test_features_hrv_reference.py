"""Version-2 HRV against independent implementations on a public real RR series (pyhrv's long sample, 4,684 RR).

Reference per window, computed without any project code:
1. the window's RR intervals (those whose beat ends in the window), in beat order;
2. artefacts by the percent-change rule read straight from its definition (Malik et al. 1989): an interval is
   rejected when it lies outside 300-2000 ms or differs by more than 20 % from the previous interval of the window's
   series; rejected intervals become NaN;
3. SDNN, RMSSD and NN50 from hrv-analysis' `get_time_domain_features` (NaN-aware: a difference touching a NaN is
   absent); pNN50 = 100 x NN50 / the number of present differences (hrv-analysis divides by all n-1 differences,
   the Task Force by the differences counted).
The processor must equal the reference to 0.01 ms / 0.01 % as one block and as 60-beat blocks delivered in shuffled
order with redeliveries. With missed and extra beats injected, SDNN and RMSSD stay within 1 % of the clean series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from features_factories import HOUR, MIN, T0, block, clock_block, decoded, in_records, pseudonym, rr_body, run
from hrv_reference import time_domain_features
from hrv_sample_data import pyhrv_long_rr

P = pseudonym("hrv-ref")
DEVICE = pseudonym("hrv-ref-device")
ZONE = "Europe/Berlin"
START = T0 + 10 * HOUR + 20 * MIN  # the hour of 10:00 UTC and 11:00 UTC, one day
TOL_MS = 0.01
TOL_PCT = 0.01


def _blocks(rr: np.ndarray[Any, Any], size: int) -> list[Any]:
    beats = START + np.cumsum(rr)
    out = []
    for seq, i in enumerate(range(0, len(rr), size)):
        begin = START if i == 0 else int(beats[i - 1])
        offsets = beats[i:i + size] - begin
        out.append(block(P, DEVICE, seq, begin, "RRIntervalSamples", rr_body(offsets.tolist(), rr[i:i + size]),
                         offset_min=60, received_ms=int(beats[min(i + size, len(rr)) - 1]) + MIN, time_zone=ZONE))
    return out


def _reference(rr: np.ndarray[Any, Any], lo: int, hi: int) -> dict[str, float]:
    beats = START + np.cumsum(rr)
    series = [float(v) for v, t in zip(rr, beats, strict=True) if lo <= t < hi]
    nn: list[float] = []
    for i, v in enumerate(series):
        bad = not 300 <= v <= 2000 or (i > 0 and (not 300 <= series[i - 1] <= 2000
                                                  or abs(v - series[i - 1]) > 0.2 * series[i - 1]))
        nn.append(float("nan") if bad else v)
    f = time_domain_features(nn)
    present = int(np.isfinite(np.diff(np.array(nn))).sum())
    return {"sdnn": f["sdnn"], "rmssd": f["rmssd"], "pnn50": 100.0 * f["nni_50"] / present,
            "n_intervals": float(np.isfinite(nn).sum()), "rejected_beats": float(np.isnan(nn).sum()),
            "n_differences": float(present)}


def _hrv_rows(blocks: list[Any], batch: int) -> dict[tuple[str, int], dict[str, float]]:
    last = max(b.record["received_at"] for b in blocks)
    outs, _ = run(in_records([*blocks, clock_block(last)]), batch=batch, version=2)
    rows = {}
    for rec, _ in decoded(outs):
        if rec["is_final"] and rec["feature_set"] == "hrv" and rec["participant_pseudonym"] == P:
            key = (rec["window"], int(rec["window_start"].timestamp() * 1000))
            assert key not in rows
            rows[key] = rec["values"]
    return rows


def _expected(rr: np.ndarray[Any, Any]) -> dict[tuple[str, int], dict[str, float]]:
    local_day = T0 - HOUR  # 2026-01-01 00:00 in Berlin (CET, +01:00)
    out = {("DAY", T0): _reference(rr, T0, T0 + 24 * HOUR),
           ("LOCAL_DAY", local_day): _reference(rr, local_day, local_day + 24 * HOUR)}
    beats = START + np.cumsum(rr)
    for h in sorted({int(t) // HOUR * HOUR for t in beats}):
        out[("HOUR", h)] = _reference(rr, h, h + HOUR)
    return out


def _compare(got: dict[tuple[str, int], dict[str, float]], want: dict[tuple[str, int], dict[str, float]]) -> float:
    assert set(got) == set(want)
    worst = 0.0
    for key, ref in want.items():
        row = got[key]
        for name in ("sdnn", "rmssd"):
            assert row[name] == pytest.approx(ref[name], abs=TOL_MS), (key, name)
            worst = max(worst, abs(row[name] - ref[name]))
        assert row["pnn50"] == pytest.approx(ref["pnn50"], abs=TOL_PCT), key
        worst = max(worst, abs(row["pnn50"] - ref["pnn50"]))
        for name in ("n_intervals", "rejected_beats", "n_differences"):
            assert row[name] == ref[name], (key, name)
    return worst


@pytest.fixture(scope="module")
def rr() -> np.ndarray[Any, Any]:
    return pyhrv_long_rr()


def test_real_series_as_one_block_equals_the_reference(rr: np.ndarray[Any, Any]) -> None:
    want = _expected(rr)
    got = _hrv_rows(_blocks(rr, len(rr)), batch=10)
    worst = _compare(got, want)
    print(f"one block: {len(want)} windows, max |difference| {worst:.2e}; day {want[('DAY', T0)]}")


def test_real_series_as_shuffled_60_beat_blocks_with_redeliveries_equals_the_reference(
        rr: np.ndarray[Any, Any]) -> None:
    blocks = _blocks(rr, 60)
    rng = np.random.default_rng(3)
    redelivered = [blocks[i] for i in rng.choice(len(blocks), size=len(blocks) // 3, replace=False)]
    order = [*blocks, *redelivered]
    order = [order[i] for i in rng.permutation(len(order))]
    got = _hrv_rows(order, batch=7)
    worst = _compare(got, _expected(rr))
    print(f"{len(blocks)} blocks + {len(redelivered)} redeliveries shuffled: max |difference| {worst:.2e}")


def _inject(rr: np.ndarray[Any, Any], seed: int) -> np.ndarray[Any, Any]:
    """Five missed beats (two intervals merged) and five extra beats (an interval split 40/60) at random places."""
    rng = np.random.default_rng(seed)
    out = [int(v) for v in rr]
    places = sorted(rng.choice(np.arange(50, len(rr) - 50), size=10, replace=False).tolist(), reverse=True)
    for k, i in enumerate(places):
        if k % 2 == 0:
            out[i:i + 2] = [out[i] + out[i + 1]]
        else:
            first = round(out[i] * 0.4)
            out[i:i + 1] = [first, out[i] - first]
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_missed_and_extra_beats_move_sdnn_and_rmssd_less_than_one_percent(rr: np.ndarray[Any, Any],
                                                                          seed: int) -> None:
    clean = _hrv_rows(_blocks(rr, 60), batch=50)[("DAY", T0)]
    dirty_rr = _inject(rr, seed)
    assert abs(int(dirty_rr.sum()) - int(rr.sum())) == 0 and len(dirty_rr) == len(rr)
    dirty = _hrv_rows(_blocks(dirty_rr, 60), batch=50)[("DAY", T0)]
    for name in ("sdnn", "rmssd"):
        change = abs(dirty[name] / clean[name] - 1)
        print(f"seed {seed}: {name} clean {clean[name]:.3f} ms, with artefacts {dirty[name]:.3f} ms "
              f"({100 * change:.3f} %)")
        assert change < 0.01, name
    assert dirty["rejected_beats"] > clean["rejected_beats"]


def test_no_ultra_short_term_minute_hrv_in_version_2(rr: np.ndarray[Any, Any]) -> None:
    rows = _hrv_rows(_blocks(rr[:300], 60), batch=10)
    assert rows and all(kind != "MINUTE" for kind, _ in rows)
