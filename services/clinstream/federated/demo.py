"""One-shot federated training on this machine: prepare (fill) the sites, start SuperLink + SuperNodes, run, stop."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinstream.core import constants as c
from clinstream.core.config import Settings
from clinstream.federated.config import SiteNodeConfig, report_paths
from clinstream.federated.deployment import Deployment
from clinstream.federated.fill import FillReport, fill_site
from clinstream.federated.pipeline_fill import PipelineCohort, fill_sites_via_pipeline
from clinstream.federated.report import read_report
from clinstream.federated.roles import ensure_reader_role, reader_url
from clinstream.store.migrate import migrate

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
    return DemoResult(run_id, status, json_path, png_path, time.monotonic() - t0, fills)
