"""Plotly figure specs (plain JSON dicts) for the console pages; plotly.js draws them in the browser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clinstream.features.catalogue import HEART_RATE, HRV, SKIN_TEMPERATURE, SLEEP, SPO2, STEPS

Figure = dict[str, Any]

# The value each participant timeline draws, with its axis label (unit from the catalogue).
TIMELINE_VALUES: dict[str, tuple[str, str]] = {
    HEART_RATE: ("mean", "heart rate, mean (/min)"),
    HRV: ("rmssd", "HRV RMSSD (ms)"),
    STEPS: ("total", "steps per hour"),
    SLEEP: ("total_sleep_time_min", "total sleep time (min)"),
    SPO2: ("mean", "SpO2, mean (%)"),
    SKIN_TEMPERATURE: ("mean", "skin temperature, mean (Cel)"),
}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "font": {"size": 14}}, "margin": {"l": 50, "r": 50, "t": 40, "b": 40},
            "height": 280, "legend": {"orientation": "h", "y": -0.25}, **extra}


def bar(title: str, x: Sequence[Any], y: Sequence[Any], y_title: str = "") -> Figure:
    """One bar trace over categories (dates stay labels, not a time axis)."""
    return {"data": [{"type": "bar", "x": list(x), "y": list(y)}],
            "layout": _layout(title, xaxis={"type": "category"}, yaxis={"title": {"text": y_title}})}


def grouped_bars(title: str, x: Sequence[Any], groups: Mapping[str, Sequence[Any]], y_title: str = "") -> Figure:
    """Bars grouped by series name."""
    return {"data": [{"type": "bar", "name": name, "x": list(x), "y": list(ys)} for name, ys in groups.items()],
            "layout": _layout(title, barmode="group", yaxis={"title": {"text": y_title}})}


def lines(title: str, series: Mapping[str, tuple[Sequence[Any], Sequence[Any]]], y_title: str = "") -> Figure:
    """One line per named (x, y) series."""
    return {"data": [{"type": "scatter", "mode": "lines+markers", "name": name, "x": list(x), "y": list(y)}
                     for name, (x, y) in series.items()],
            "layout": _layout(title, yaxis={"title": {"text": y_title}})}


def histogram(title: str, values: Sequence[float], x_title: str, bin_size: float, lowest: float = 0.0) -> Figure:
    """A histogram binned on the server (a page carries the bins, not every participant's value)."""
    top = max(values, default=lowest)
    edges = np.arange(lowest, top + bin_size * 1.001, bin_size)
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=edges if len(edges) > 1 else 1)
    centres = ((edges[:-1] + edges[1:]) / 2).round(6).tolist()
    trace: dict[str, Any] = {"type": "bar", "x": centres, "y": counts.tolist(), "width": bin_size * 0.95,
                             "customdata": [int(c) for c in counts]}
    return {"data": [trace],
            "layout": _layout(title, xaxis={"title": {"text": x_title}}, yaxis={"title": {"text": "participants"}},
                              bargap=0.05)}


def quantile_boxes(title: str, rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Box plots from precomputed quantiles (10, 25, 50, 75, 90 %) per feature set."""
    data = [{"type": "box", "name": r["feature_set"], "lowerfence": [r["q"][0]], "q1": [r["q"][1]],
             "median": [r["q"][2]], "q3": [r["q"][3]], "upperfence": [r["q"][4]], "x": [r["feature_set"]]}
            for r in rows]
    return {"data": data, "layout": _layout(title, showlegend=False,
                                            yaxis={"title": {"text": "completeness (10-90 %)"}, "range": [0, 1]})}


def timeline(feature_set: str, series: Mapping[str, list[Any]]) -> Figure:
    """A feature's values over time; completeness on a second axis; windows not yet final drawn hollow."""
    key, label = TIMELINE_VALUES[feature_set]
    values = [v.get(key) if v else None for v in series["values"]]
    symbols = ["circle" if final else "circle-open" for final in series["is_final"]]
    hover = [f"completeness {c:.2f}, revision {r}, {'final' if f else 'not final'}"
             for c, r, f in zip(series["completeness"], series["revision"], series["is_final"], strict=True)]
    return {"data": [
        {"type": "scatter", "mode": "lines+markers", "name": label, "x": series["t"], "y": values,
         "marker": {"symbol": symbols, "size": 5}, "text": hover},
        {"type": "scatter", "mode": "lines", "name": "completeness", "x": series["t"], "y": series["completeness"],
         "yaxis": "y2", "line": {"dash": "dot", "width": 1}},
    ], "layout": _layout(label, yaxis={"title": {"text": label}},
                         yaxis2={"title": {"text": "completeness"}, "overlaying": "y", "side": "right",
                                 "range": [0, 1.05]})}
