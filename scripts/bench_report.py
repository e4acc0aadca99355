"""The end-to-end benchmark's chart (PNG) and Markdown tables, from its JSON report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PROCESSES = ("gateway", "pseudonymise", "features", "store", "kafka", "postgres")
PEER_PROCESSES = ("quix", "kafka", "postgres")
COLOURS = {"gateway": "tab:blue", "pseudonymise": "tab:orange", "features": "tab:green", "store": "tab:red",
           "kafka": "tab:purple", "postgres": "tab:brown", "quix": "tab:pink"}


def _get(d: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def _rate(c: Mapping[str, Any], key: str) -> float:
    return float(c.get("readings_per_s", 0) if key == "e2e" else _get(c, key, "readings_per_s", default=0) or 0)


def chart(report: Mapping[str, Any], path: Path) -> None:
    """Throughput (log), CPU seconds per million readings by process, latency percentiles, soak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = [c for c in report["cohorts"] if "readings_per_s" in c]
    soak = report.get("soak")
    fig, axes = plt.subplots(1, 4 if soak else 3, figsize=(22 if soak else 17, 5))
    labels = [f"{c['participants']:,}\nloader {_get(c, 'loader', 'percent_of_core', default=0)} %" for c in cohorts]
    x = np.arange(len(cohorts))
    ax = axes[0]
    series = (("e2e", "clinstream end to end"), ("quix", "Quix Streams peer (from the topic)"),
              ("gateway_only", "gateway-only limit (HTTP -> raw topic)"), ("limit", "passthrough limit"))
    width = 0.8 / len(series)
    for k, (key, name) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [_rate(c, key) for c in cohorts], width, label=name)
    ax.axhline(200_000, color="grey", ls="--", lw=1, label="target 200k/s")
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_xlabel("participants (loader share of a core)")
    ax.set_ylabel("readings / s")
    ax.legend(fontsize=7)
    ax.set_title("throughput")
    ax = axes[1]
    for k, (who, procs, key) in enumerate((("clinstream", PROCESSES, "cpu_s_per_million"),
                                           ("Quix peer", PEER_PROCESSES, "quix"))):
        bottom = np.zeros(len(cohorts))
        for proc in procs:
            vals = np.asarray([float(_get(c, "cpu_s_per_million", proc, default=0) if key == "cpu_s_per_million"
                                     else _get(c, "quix", "cpu_s_per_million", proc, default=0)) for c in cohorts])
            ax.bar(x + (k - 0.5) * 0.4, vals, 0.4, bottom=bottom, label=f"{who}: {proc}",
                   color=COLOURS[proc], hatch="//" if k else None, edgecolor="white")
            bottom += vals
    ax.axhline(5, color="green", ls="--", lw=1, label="target: stages + Kafka + PG <= 5")
    ax.axhline(10, color="grey", ls="--", lw=1, label="target: with gateway <= 10")
    ax.set_xticks(x, [f"{c['participants']:,}" for c in cohorts])
    ax.set_xlabel("participants (left clinstream, right Quix peer)")
    ax.set_ylabel("CPU seconds per million readings")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("CPU cost by process")
    ax = axes[2]
    bars = [("paced", "p50"), ("paced", "p99"), ("Quix peer paced", "p50"), ("Quix peer paced", "p99"),
            ("saturated", "p50"), ("saturated", "p99")]
    where = {"paced": ("paced", "latency_s"), "Quix peer paced": ("quix", "live", "latency_s"),
             "saturated": ("latency_s",)}
    for k, (phase, q) in enumerate(bars):
        vals = [float((_get(c, *where[phase], default={}) or {}).get(q, 0) or 0) for c in cohorts]
        ax.bar(x + (k - 2.5) * 0.13, vals, 0.13, label=f"{phase} {q}")
    ax.axhline(2, color="grey", ls="--", lw=1, label="target: paced p99 <= 2 s")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{c['participants']:,}" for c in cohorts])
    ax.set_xlabel("participants")
    ax.set_ylabel("minute over (block sent) -> 1-min row visible (s)")
    ax.legend(fontsize=7)
    ax.set_title("latency beyond the window")
    if soak:
        pts = np.asarray(soak["series"]) if soak["series"] else np.zeros((0, 2))
        axes[3].plot(pts[:, 0], pts[:, 1])
        axes[3].set_xlabel("minutes")
        axes[3].set_ylabel("features worker RSS (MB)")
        axes[3].set_title(f"soak, {soak['participants']:,} participants: {soak['slope_mb_per_min']} MB/min")
    load = " ".join(f"{v:.1f}" for v in report["machine"].get("load_avg_at_start", ()))
    fig.suptitle(f"clinstream end-to-end benchmark ({report['machine']['cpus']} CPUs, broker and database on the "
                 f"same machine; load average at start {load})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _n(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) else "-"


def table(report: Mapping[str, Any]) -> str:
    """Markdown: the headline table and CPU seconds per million readings by process."""
    rows = ["| participants | end to end | gateway accepts | Quix peer | gateway-only limit | passthrough limit "
            "| CPU-s/M stages+Kafka+PG | CPU-s/M with gateway | Quix CPU-s/M | latency beyond window p50 / p99 "
            "(paced) | Quix latency p50 / p99 (paced) | loader CPU | stored once | peer rows equal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cohorts"]:
        if "readings_per_s" not in c:
            rows.append(f"| {c['participants']:,} | failed: {c.get('error', '?')} |" + " |" * 12)
            continue
        pm = c.get("cpu_s_per_million", {})
        paced = _get(c, "paced", "latency_s", default={}) or {}
        check = _get(c, "quix", "check", default={}) or {}
        qlat = _get(c, "quix", "live", "latency_s", default={}) or {}
        equal = (f"{check.get('equal')} ({check.get('peer_rows', 0):,} rows)" if check else "-")
        rows.append(
            f"| {c['participants']:,} | {_n(c['readings_per_s'])}/s | {_n(c.get('gateway_readings_per_s'))}/s "
            f"| {_n(_get(c, 'quix', 'readings_per_s'))}/s | {_n(_get(c, 'gateway_only', 'readings_per_s'))}/s "
            f"| {_n(_get(c, 'limit', 'readings_per_s'))}/s | {pm.get('stages_with_kafka_postgres', '-')} "
            f"| {pm.get('pipeline_with_gateway', '-')} | {_get(c, 'quix', 'cpu_s_per_million', 'total', default='-')} "
            f"| {paced.get('p50', '-')} / {paced.get('p99', '-')} s "
            f"| {qlat.get('p50', '-')} / {qlat.get('p99', '-')} s "
            f"| {_get(c, 'loader', 'percent_of_core', default='-')} % of a core "
            f"| {_get(c, 'stored_once', 'ok', default='-')} | {equal} |")
    rows += ["", "CPU seconds per million readings, by process (end-to-end run; the Quix peer from the topic):", "",
             "| participants | " + " | ".join(PROCESSES) + " | Quix peer | Kafka (peer) | PostgreSQL (peer) |",
             "|---|" + "---|" * (len(PROCESSES) + 3)]
    for c in report["cohorts"]:
        pm = c.get("cpu_s_per_million", {})
        qm = _get(c, "quix", "cpu_s_per_million", default={}) or {}
        rows.append(f"| {c['participants']:,} | " + " | ".join(str(pm.get(p, "-")) for p in PROCESSES)
                    + f" | {qm.get('quix', '-')} | {qm.get('kafka', '-')} | {qm.get('postgres', '-')} |")
    replay = report.get("replay") or {}
    if "times_real_time" in replay:
        workers = f" --workers {replay['workers']}" if replay.get("workers", 1) > 1 else ""
        rows += ["", f"Replay of the features stage (`clinstream replay{workers}`, {replay['participants']:,} "
                 f"participants x {replay['hours']} h): {replay['readings_per_s']:,} readings/s = "
                 f"{replay['times_real_time']:,.0f}x real time."]
    return "\n".join(rows) + "\n"
