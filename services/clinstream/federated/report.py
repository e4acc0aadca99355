"""The run report: JSON with per-site and global metrics per round, the worst site, declines and DP settings, + PNG.

The ServerApp writes `federated-report-<run id>.json` and `.png` into the run's report directory. Per round and
site, a train entry shows what the site reported (its update's norm before clipping, its FedProx mu and proximal
penalty) and what the server received (`received_update_norm`); under DP a round's `dp_noise` holds the coordinate
count and sum of squares of the noise actually added.

The demo (and the test harness) add a `comparison` section (local-only training per site and a pooled reference on
the union, each over participant splits) and re-render the chart with `write_report`; production runs never pool
data, so they have no comparison. `summary_rows` is the table `clinstream federated demo` prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers
import matplotlib.pyplot as plt

from clinstream.federated import protocol as p
from clinstream.federated.config import report_paths
from clinstream.federated.strategy import SiteReply

_SITE_KEYS = {
    "train": (p.NUM_EXAMPLES, p.PARTICIPANTS, p.TRAIN_LOSS, p.UPDATE_NORM, p.PROXIMAL_MU, p.PROXIMAL_PENALTY),
    "evaluate": (p.NUM_EXAMPLES, p.PARTICIPANTS, p.ROC_AUC, p.BALANCED_ACCURACY, p.EVAL_LOSS),
    "stats": (p.NUM_EXAMPLES,),
}


def _key(name: str) -> str:
    return name.replace("-", "_")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _site_entry(reply: SiteReply) -> dict[str, Any]:
    entry: dict[str, Any] = {"declined": reply.declined}
    if reply.declined:
        entry["reason"] = reply.reason
    for key in _SITE_KEYS.get(reply.phase, ()):
        if key in reply.metrics:
            entry[_key(key)] = reply.metrics[key]
    if reply.received_update_norm is not None:
        entry["received_update_norm"] = reply.received_update_norm
    return entry


def worst_site(sites: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The taking-part site with the lowest ROC AUC (ties: lowest balanced accuracy)."""
    auc_key, bacc_key = _key(p.ROC_AUC), _key(p.BALANCED_ACCURACY)
    scored = [(float(v[auc_key]), float(v.get(bacc_key) or math.nan), site) for site, v in sites.items()
              if not v.get("declined") and isinstance(v.get(auc_key), float) and math.isfinite(v[auc_key])]
    if not scored:
        return None
    auc, bacc, site = min(scored)
    return {"site": site, auc_key: auc, bacc_key: bacc}


def build_report(*, run_id: int, run_config: Mapping[str, Any], strategy: Mapping[str, Any],
                 standardisation: Mapping[str, Any], task: Mapping[str, Any], replies: Sequence[SiteReply],
                 global_metrics: Mapping[int, Mapping[str, float]], started_at: str, finished_at: str,
                 num_rounds: int, dp_noise: Mapping[int, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict (see the module doc); `dp_noise` is what the DP wrapper added per round."""
    rounds: list[dict[str, Any]] = []
    for r in range(1, num_rounds + 1):
        entry: dict[str, Any] = {"round": r}
        for phase in ("train", "evaluate"):
            entry[phase] = {x.site: _site_entry(x) for x in replies if x.round == r and x.phase == phase}
        entry["global"] = {_key(k): v for k, v in global_metrics.get(r, {}).items()}
        if dp_noise and r in dp_noise:
            entry["dp_noise"] = dict(dp_noise[r])
        rounds.append(entry)
    last = rounds[-1] if rounds else {"evaluate": {}, "global": {}}
    stats = {x.site: _site_entry(x) for x in replies if x.phase == "stats"}
    report = {
        "run_id": str(run_id),
        "started_at": started_at,
        "finished_at": finished_at,
        "task": dict(task),
        "strategy": dict(strategy),
        "privacy": {
            "differential_privacy": strategy.get("differential_privacy", {"mode": "off"}),
            "min_participants": run_config.get("min-participants"),
            "sent_by_sites": "model arrays (coef, intercept) and aggregate metrics: example and participant "
                             "counts, losses, ROC AUC, balanced accuracy, score histograms"
                             + (", feature sums (federated standardisation)" if stats else ""),
        },
        "standardisation": {**standardisation, **({"sites": stats} if stats else {})},
        "run_config": dict(run_config),
        "rounds": rounds,
        "final": {"global": last["global"], "sites": last["evaluate"], "worst_site": worst_site(last["evaluate"])},
        "declines": [{"round": x.round, "phase": x.phase, "site": x.site, "reason": x.reason}
                     for x in replies if x.declined],
        "comparison": None,
    }
    return dict(_clean(report))


def _reference(ax: Any, comparison: Mapping[str, Any], key: str, color: str, label: str) -> None:
    """A reference model's mean AUC as a dotted line, its spread over participant splits (+-1 SD) as a band."""
    mean = comparison.get(key)
    if mean is None:
        return
    spread = comparison.get(f"{key}_spread") or {}
    sd = spread.get("sd")
    if sd:
        ax.axhspan(mean - sd, mean + sd, color=color, alpha=0.12)
        label = f"{label} {mean:.3f} +- {sd:.3f} ({spread.get('splits')} splits)"
    ax.axhline(mean, color=color, linestyle=":", label=label)


def _fmt(value: Any) -> str | None:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else None


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The comparison that matters, one row per model: federated (global, per site), local-only, pooled."""
    final = report.get("final") or {}
    glob = final.get("global") or {}
    rows: list[dict[str, Any]] = [{"model": "federated", "site": "all (global)", "roc_auc": _fmt(glob.get("roc_auc")),
                                   "spread": None, "balanced_accuracy": _fmt(glob.get("balanced_accuracy"))}]
    for site, v in sorted((final.get("sites") or {}).items()):
        rows.append({"model": "federated", "site": site,
                     "roc_auc": None if v.get("declined") else _fmt(v.get("roc_auc")),
                     "spread": "declined: " + str(v.get("reason")) if v.get("declined") else None,
                     "balanced_accuracy": _fmt(v.get("balanced_accuracy"))})
    comparison = report.get("comparison") or {}
    for site, spread in sorted((comparison.get("local_roc_auc") or {}).items()):
        if isinstance(spread, Mapping):
            rows.append(_spread_row("local-only", site, spread))
    for key, model, site in (("local_mean_roc_auc_spread", "local-only", "mean of sites"),
                             ("pooled_roc_auc_spread", "pooled (demo only)", "all (union)")):
        if isinstance(comparison.get(key), Mapping):
            rows.append(_spread_row(model, site, comparison[key]))
    return rows


def _spread_row(model: str, site: str, spread: Mapping[str, Any]) -> dict[str, Any]:
    sd, lo, hi = _fmt(spread.get("sd")), _fmt(spread.get("min")), _fmt(spread.get("max"))
    text = f"+- {sd} SD, {lo}-{hi} over {spread.get('splits')} splits" if sd else None
    return {"model": model, "site": site, "roc_auc": _fmt(spread.get("mean")), "spread": text,
            "balanced_accuracy": None}


def chart(report: Mapping[str, Any], path: Path) -> None:
    """PNG: ROC AUC and balanced accuracy per round, global and per site (+ comparison lines if present)."""
    rounds = report.get("rounds", [])
    xs = [r["round"] for r in rounds]
    last = rounds[-1]["evaluate"] if rounds else {}
    sites = sorted({s for r in rounds for s in r.get("evaluate", {})})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[2].tick_params(axis="x", labelsize=7)
    for ax, key, title in ((axes[0], "roc_auc", "ROC AUC (held-out participants)"),
                           (axes[1], "balanced_accuracy", "Balanced accuracy")):
        ax.plot(xs, [r.get("global", {}).get(key) for r in rounds], "k-o", linewidth=2.5, label="global (pooled)")
        for site in sites:
            ax.plot(xs, [r.get("evaluate", {}).get(site, {}).get(key) for r in rounds], "--o", alpha=0.8,
                    label=site)
        comparison = report.get("comparison") or {}
        if key == "roc_auc" and comparison:
            _reference(ax, comparison, "local_mean_roc_auc", "tab:red", "local-only (mean of sites)")
            _reference(ax, comparison, "pooled_roc_auc", "tab:green", "pooled reference (demo only)")
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_ylim(0.3, 1.0)
        ax.set_xticks(xs)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.legend(fontsize=7)
    bars = axes[2].bar(sites, [last.get(s, {}).get("num_examples") or 0 for s in sites], color="tab:blue")
    for bar, site in zip(bars, sites, strict=True):
        if last.get(site, {}).get("declined"):
            axes[2].annotate("declined", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                             color="tab:red")
    axes[2].set_title("Held-out examples per site (last round)")
    worst = (report.get("final") or {}).get("worst_site")
    if worst:
        axes[2].set_xlabel(f"worst site: {worst['site']} (AUC {worst['roc_auc']:.3f})")
    fig.suptitle(f"Federated run {report.get('run_id')} - {report.get('strategy', {}).get('name', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: Mapping[str, Any], report_dir: Path) -> tuple[Path, Path]:
    """Write the JSON and the PNG; returns their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = report_paths(report_dir, report["run_id"])
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(report), indent=2, allow_nan=False), encoding="utf-8")
    chart(report, png_path)
    tmp.replace(json_path)  # the JSON appears last and whole: its presence means the report is complete
    return json_path, png_path


def read_report(path: Path) -> dict[str, Any]:
    """A written report."""
    return dict(json.loads(path.read_text(encoding="utf-8")))
