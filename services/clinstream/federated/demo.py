"""One-shot federated training on this machine: prepare the sites, start SuperLink + SuperNodes, run, stop."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinstream.core.config import Settings
from clinstream.federated.config import SiteNodeConfig, report_paths
from clinstream.federated.deployment import Deployment
from clinstream.federated.fill import FillReport, fill_site
from clinstream.federated.report import read_report
from clinstream.federated.roles import ensure_reader_role, reader_url
from clinstream.store.migrate import migrate


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


def prepare_site(settings: Settings, *, participants: int = 0, days: int = 40, seed: int = 0) -> FillReport | None:
    """Migrate the site schema, fill it with a synthetic cohort when participants > 0, create its reader role."""
    migrate(settings)
    report = fill_site(settings, participants, days, seed) if participants > 0 else None
    ensure_reader_role(settings)
    return report


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
         days: int = 40, seed: int = 0, timeout_s: float = 900.0) -> DemoResult:
    """Fill (if participants > 0) and federate the sites; raises if the run did not complete."""
    t0 = time.monotonic()
    fills = [f for i, s in enumerate(sites)
             if (f := prepare_site(s, participants=participants, days=days, seed=seed + i)) is not None]
    run_id, status, report_dir = run_federation(work_dir, site_nodes(sites), run_config, timeout_s)
    json_path, png_path = report_paths(report_dir, run_id)
    if status != "finished:completed" or not json_path.exists():
        raise RuntimeError(f"run {run_id} ended as {status}; logs in {work_dir / 'logs'}")
    return DemoResult(run_id, status, json_path, png_path, time.monotonic() - t0, fills)
