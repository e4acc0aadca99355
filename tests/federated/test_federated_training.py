"""End to end: a real SuperLink and one SuperNode per site over real feature stores; FedAvg to completion.

Three sites of 30 synthetic participants x 40 days are filled through the feature processor and the store writer;
a fourth site has only 6 participants and must decline every round, saying why, without stopping the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federated_harness import comparison, drop_sites, load_as_reader, new_sites

from clinstream.core.config import Settings
from clinstream.federated.config import TaskConfig, report_paths
from clinstream.federated.demo import prepare_site, run_federation, site_nodes
from clinstream.federated.deployment import Deployment
from clinstream.federated.report import read_report, write_report

pytestmark = pytest.mark.integration

ROUNDS = 2
SEEDS = (41, 42, 43)


@dataclass
class Federation:
    """The finished run: sites, report and the processes' liveness seen while it ran."""

    big: list[Settings]
    small: Settings
    run_id: int
    status: str
    report_json: Path
    report_png: Path
    report: dict[str, Any]
    processes_seen: dict[str, bool]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    *big, small = new_sites("a", "b", "c", "s")
    seen: dict[str, bool] = {}

    def record(deployment: Deployment) -> None:
        seen.update(deployment.alive())

    try:
        for seed, site in zip(SEEDS, big, strict=True):
            prepare_site(site, participants=30, days=40, seed=seed)
        prepare_site(small, participants=6, days=40, seed=99)
        work = tmp_path_factory.mktemp("federation")
        run_id, status, report_dir = run_federation(work, site_nodes([*big, small]), {"num-rounds": ROUNDS},
                                                    timeout_s=420, on_started=record)
        json_path, png_path = report_paths(report_dir, run_id)
        yield Federation(big, small, run_id, status, json_path, png_path, read_report(json_path), seen)
    finally:
        drop_sites([*big, small])


def test_federated_training_completes_and_beats_local_only(federation: Federation) -> None:
    assert federation.status == "finished:completed"
    assert federation.processes_seen and all(federation.processes_seen.values())  # 1 SuperLink + 4 SuperNodes
    assert len(federation.processes_seen) == 5
    report = federation.report
    big_ids = [s.site_id for s in federation.big]

    # per-site and global metrics for every round
    assert [r["round"] for r in report["rounds"]] == list(range(1, ROUNDS + 1))
    for rnd in report["rounds"]:
        for site in big_ids:
            entry = rnd["evaluate"][site]
            assert not entry["declined"]
            assert 0.0 <= entry["roc_auc"] <= 1.0 and 0.0 <= entry["balanced_accuracy"] <= 1.0
            assert entry["num_examples"] > 0 and entry["participants"] >= 10
            assert rnd["train"][site]["num_examples"] > 0
        assert rnd["global"]["num_examples"] == sum(rnd["evaluate"][s]["num_examples"] for s in big_ids)
    final = report["final"]
    assert final["worst_site"]["site"] in big_ids
    assert final["worst_site"]["roc_auc"] == min(final["sites"][s]["roc_auc"] for s in big_ids)
    assert report["strategy"]["name"] == "fedavg" and report["strategy"]["weighted_by"] == "num-examples"
    assert report["privacy"]["differential_privacy"] == {"mode": "off"}
    assert federation.report_png.stat().st_size > 10_000

    # the comparison the harness alone may make: local-only per site and pooled data
    cfg = TaskConfig.from_run_config({"num-rounds": ROUNDS})
    baselines = comparison({s.site_id: load_as_reader(s, cfg) for s in federation.big}, cfg)
    global_auc = final["global"]["roc_auc"]
    assert global_auc > 0.65, "held-out participants: the federated model must be clearly better than chance"
    assert global_auc > baselines["local_mean_roc_auc"], (global_auc, baselines)
    assert math.isfinite(baselines["pooled_roc_auc"])

    report["comparison"] = {**baselines, "federated_global_roc_auc": global_auc,
                            "federated_gain_over_local_mean": global_auc - baselines["local_mean_roc_auc"]}
    json_path, _ = write_report(report, federation.report_json.parent)
    assert read_report(json_path)["comparison"]["local_mean_roc_auc"] == baselines["local_mean_roc_auc"]
    per_site = {s: round(final["sites"][s]["roc_auc"], 3) for s in big_ids}
    local = {s: round(v, 3) for s, v in baselines["local_roc_auc"].items()}
    print(f"\nfederated global ROC AUC {global_auc:.3f} (per site {per_site}); local-only {local} mean "
          f"{baselines['local_mean_roc_auc']:.3f}; pooled {baselines['pooled_roc_auc']:.3f}; report {json_path}")


def test_site_under_minimum_cohort_declines_every_round_and_says_why(federation: Federation) -> None:
    report = federation.report
    small = federation.small.site_id
    declines = [d for d in report["declines"] if d["site"] == small]
    assert {(d["round"], d["phase"]) for d in declines} == {
        (r, phase) for r in range(1, ROUNDS + 1) for phase in ("train", "evaluate")}
    train_reasons = {d["reason"] for d in declines if d["phase"] == "train"}
    eval_reasons = {d["reason"] for d in declines if d["phase"] == "evaluate"}
    assert train_reasons == {"only 4 training participants with examples; the minimum cohort is 10"}
    assert eval_reasons == {"only 2 held-out participants with examples; the minimum cohort is 10"}
    assert all(d["site"] in (small,) for d in report["declines"])  # the big sites never declined
    for rnd in report["rounds"]:
        assert rnd["train"][small] == {"declined": True, "reason": next(iter(train_reasons)), "num_examples": 0,
                                       "participants": 0, "train_loss": 0.0}
        assert rnd["evaluate"][small]["declined"] and rnd["evaluate"][small]["num_examples"] == 0
        assert rnd["global"]["sites"] == 3  # the declining site is not aggregated
