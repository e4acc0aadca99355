"""One-shot federated training on this machine: prepare (fill) the sites, start SuperLink + SuperNodes, run, stop."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinstream.core import constants as c
from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.federated.config import SiteNodeConfig, TaskConfig, report_paths
from clinstream.federated.dataset import FEATURE_NAMES, SiteDataset, load_site_dataset, split_by_participant
from clinstream.federated.metrics import roc_auc
from clinstream.federated.report import read_report, write_report
from clinstream.federated.roles import ensure_reader_role, reader_url
from clinstream.federated.task import LogisticModel, Standardiser, TrainParams, train
from clinstream.store.migrate import migrate
from clinstream_devtools.federated.fill import FillReport, fill_site
from clinstream_devtools.federated.local_deployment import Deployment
from clinstream_devtools.federated.pipeline_fill import PipelineCohort, fill_sites_via_pipeline

SYNTHETIC = "synthetic"
PIPELINE = "pipeline"
SOURCES = (SYNTHETIC, PIPELINE)
SYNTHETIC_DAYS = 40


@dataclass
class DemoResult:
    """What a demo run produced."""

    run_id: int
    status: str
    report_json: Path
    report_png: Path
    seconds: float
    fills: list[FillReport]

    def report(self) -> dict[str, Any]:
        """The run's report."""
        return read_report(self.report_json)


def prepare_sites(sites: Sequence[tuple[Settings, int, int]], *, days: int | None = None,
                  source: str = SYNTHETIC, work_dir: Path | None = None,
                  end_ms: int | None = None) -> list[FillReport | None]:
    """Migrate each (site, participants, seed), fill it when participants > 0, create its reader role.

    `source` "synthetic" pushes a synthetic pseudonymised cohort through the feature processor and the store
    writer in-process (`fill.py`, fast); "pipeline" runs each site's real pipeline (gateway and workers) and
    drives the device and LIMS simulators through it (`pipeline_fill.py`; the pipelines' keys, state and logs go
    under `work_dir`; a site whose Settings name a pseudonym key file uses it). `days` defaults to 40 (synthetic)
    or FEDERATED_FILL_DAYS (pipeline); `end_ms` fixes the end of a pipeline fill's window (a backfill).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    for s, _, _ in sites:
        migrate(s)
    reports: list[FillReport | None] = [None] * len(sites)
    todo = [(i, s, n, seed) for i, (s, n, seed) in enumerate(sites) if n > 0]
    if source == PIPELINE:
        work = work_dir or sites[0][0].data_dir.resolve() / "federated"
        cohort_days = days or c.FEDERATED_FILL_DAYS
        filled = fill_sites_via_pipeline(
            [(s, PipelineCohort(participants=n, days=cohort_days, seed=seed, end_ms=end_ms))
             for _, s, n, seed in todo], work)
        for (i, *_), report in zip(todo, filled, strict=True):
            reports[i] = report
    else:
        for i, s, n, seed in todo:
            reports[i] = fill_site(s, n, days or SYNTHETIC_DAYS, seed)
    for s, _, _ in sites:
        ensure_reader_role(s)
    return reports


def prepare_site(settings: Settings, *, participants: int = 0, days: int | None = None, seed: int = 0,
                 source: str = SYNTHETIC, work_dir: Path | None = None) -> FillReport | None:
    """Migrate the site schema, fill it when participants > 0 (see `prepare_sites`), create its reader role."""
    return prepare_sites([(settings, participants, seed)], days=days, source=source, work_dir=work_dir)[0]


def site_nodes(sites: Sequence[Settings], min_participants: dict[str, int] | None = None) -> list[SiteNodeConfig]:
    """Node configs of the sites: their reader-role URL and optional own minimum cohort."""
    floors = min_participants or {}
    return [SiteNodeConfig(s.site_id, reader_url(s.database_url, s.site_id), floors.get(s.site_id, 0))
            for s in sites]


def run_federation(work_dir: Path, nodes: Sequence[SiteNodeConfig], run_config: dict[str, Any],
                   timeout_s: float, on_started: Callable[[Deployment], None] | None = None) -> tuple[int, str, Path]:
    """Start SuperLink + one SuperNode per node, run the app to the end, stop everything; (run id, status, dir)."""
    report_dir = Path(run_config.get("report-dir") or work_dir / "reports")
    config = {**run_config, "report-dir": str(report_dir), "min-nodes": len(nodes)}
    with Deployment(work_dir) as deployment:
        deployment.start_superlink()
        deployment.start_supernodes(nodes)
        if on_started is not None:
            on_started(deployment)
        run_id, status = deployment.run(config, timeout_s=timeout_s, report_dir=report_dir)
    return run_id, status, report_dir


def demo(sites: Sequence[Settings], work_dir: Path, run_config: dict[str, Any], *, participants: int = 30,
         days: int | None = None, seed: int = 0, timeout_s: float = 900.0, source: str = SYNTHETIC) -> DemoResult:
    """Fill (if participants > 0, from `source`) and federate the sites; raises if the run did not complete."""
    t0 = time.monotonic()
    fills = [f for f in prepare_sites([(s, participants, seed + i) for i, s in enumerate(sites)], days=days,
                                      source=source, work_dir=work_dir) if f is not None]
    run_id, status, report_dir = run_federation(work_dir, site_nodes(sites), run_config, timeout_s)
    json_path, png_path = report_paths(report_dir, run_id)
    if status != "finished:completed" or not json_path.exists():
        raise RuntimeError(f"run {run_id} ended as {status}; logs in {work_dir / 'logs'}")
    report = read_report(json_path)
    report["comparison"] = site_comparison(sites, report.get("run_config") or run_config)
    json_path, png_path = write_report(report, report_dir)
    return DemoResult(run_id, status, json_path, png_path, time.monotonic() - t0, fills)


COMPARISON_SPLITS = 5  # participant splits the demo's local-only and pooled references are trained on


def _resplit(data: SiteDataset, cfg: TaskConfig, salt: str) -> SiteDataset:
    held_out = split_by_participant(data.participants, cfg.test_fraction, salt)
    test = np.array([p in held_out for p in data.participants], dtype=bool)
    return SiteDataset(data.x, data.y, data.participants, test, data.feature_names)


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "min": None, "max": None, "splits": 0}
    return {"mean": float(np.mean(finite)), "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
            "min": float(min(finite)), "max": float(max(finite)), "splits": len(finite)}


def split_comparison(datasets: Mapping[str, SiteDataset], cfg: TaskConfig,
                     splits: int = COMPARISON_SPLITS) -> dict[str, Any]:
    """Local-only models (one per site) and a pooled reference, each over `splits` participant splits.

    Same model, standardisation ('site'), gradient steps (rounds x local epochs) and test fraction as the
    federated run; split 0 is the federated run's own split (its salt), the others re-salt it. Pooling is possible
    only in the demo, where every site's data is on this machine.
    """
    steps = TrainParams(cfg.num_rounds * cfg.local_epochs, cfg.learning_rate, cfg.l2)
    local: dict[str, list[float]] = {site: [] for site in datasets}
    local_mean: list[float] = []
    pooled: list[float] = []
    for k in range(splits):
        salt = cfg.split_salt if k == 0 else f"{cfg.split_salt}:{k}"
        z_tr, y_tr, z_te, y_te = [], [], [], []
        for site, data in datasets.items():
            split = _resplit(data, cfg, salt)
            x_train, y_train = split.part(test=False)
            x_test, y_test = split.part(test=True)
            std = Standardiser.fit(x_train)
            a, b = std.transform(x_train), std.transform(x_test)
            model = train(LogisticModel.zeros(len(data.feature_names)), a, y_train, steps)
            local[site].append(roc_auc(y_test, model.predict_proba(b)))
            z_tr.append(a)
            y_tr.append(y_train)
            z_te.append(b)
            y_te.append(y_test)
        local_mean.append(float(np.nanmean([local[s][-1] for s in datasets])))
        model = train(LogisticModel.zeros(len(FEATURE_NAMES)), np.vstack(z_tr), np.concatenate(y_tr), steps)
        pooled.append(roc_auc(np.concatenate(y_te), model.predict_proba(np.vstack(z_te))))
    return {
        "note": "demo only: local-only and pooled models on the same examples and model, over participant splits",
        "splits": splits,
        "local_roc_auc": {site: _spread(v) for site, v in local.items()},
        "local_mean_roc_auc": _spread(local_mean)["mean"],
        "local_mean_roc_auc_spread": _spread(local_mean),
        "pooled_roc_auc": _spread(pooled)["mean"],
        "pooled_roc_auc_spread": _spread(pooled),
    }


def site_comparison(sites: Sequence[Settings], run_config: Mapping[str, Any]) -> dict[str, Any]:
    """`split_comparison` over the sites' stored features (read through each site's own connection)."""
    cfg = TaskConfig.from_run_config(run_config)
    datasets = {}
    for s in sites:
        with connect_with_retry(s) as conn:
            datasets[s.site_id] = load_site_dataset(conn, cfg)
    return split_comparison(datasets, cfg)
