"""End to end: three sites filled through their real pipelines by the simulators; a real SuperLink and one
SuperNode per site over their feature stores; FedAvg to completion.

Each site runs its own gateway and pseudonymise, features and store workers (real Kafka and PostgreSQL). The LIMS
simulator sends consent, visits and CRP results, and the device simulator sends 24 days of wearable telemetry
(the sparse, daily-syncing profile) over HTTP. The three big sites differ in size (26, 30 and 34 participants)
and people (seeds). A fourth site has only 6 participants and must decline every round, saying why, without
stopping the others.

Deterministic: the cohorts are seeded, the window is a fixed historic one (a backfill), and each site's
pseudonym key is a fixed test key, so the participants held out (a salted hash of the pseudonym) are the same
on every run. This test checks what holds on any split: the run completes, every site reports per-round
metrics, the global metrics are the sum of the sites', and the small site declines. Whether federated training
beats local-only training is a statistical property: test_federated_gain.py measures it over 200 random splits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federated_harness import comparison, drop_sites, load_as_reader, new_sites, with_test_key

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.federated.config import TaskConfig, report_paths
from clinstream.federated.report import read_report, write_report
from clinstream_devtools.federated.demo import PIPELINE, prepare_sites, run_federation, site_nodes
from clinstream_devtools.federated.local_deployment import Deployment
from clinstream_devtools.federated.pipeline_fill import PipelineFillReport

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("flower")]  # Flower's fixed ports

ROUNDS = 2
BIG = ((26, 44), (30, 45), (34, 46))  # (participants, seed) of the sites a, b, c (any seeds: nothing here
# depends on the size of the federated gain)
SMALL = (6, 99)
WINDOW_END_MS = 1_769_644_800_000  # 2026-01-29T00:00:00Z: wearables from 2026-01-05, visits from 2026-01-14


@dataclass
class Federation:
    """The finished run: sites, fills, report and the processes' liveness seen while it ran."""

    big: list[Settings]
    small: Settings
    fills: list[PipelineFillReport]
    fill_seconds: float
    run_id: int
    status: str
    report_json: Path
    report_png: Path
    report: dict[str, Any]
    processes_seen: dict[str, bool]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("federation")
    *big, small = [with_test_key(site, work / "secrets", label)
                   for site, label in zip(new_sites("a", "b", "c", "s"), "abcs", strict=True)]
    seen: dict[str, bool] = {}

    def record(deployment: Deployment) -> None:
        seen.update(deployment.alive())

    try:
        t0 = time.monotonic()
        fills = prepare_sites([(site, n, seed) for site, (n, seed) in zip([*big, small], [*BIG, SMALL], strict=True)],
                              source=PIPELINE, work_dir=work, end_ms=WINDOW_END_MS)
        fill_seconds = time.monotonic() - t0
        assert all(isinstance(f, PipelineFillReport) for f in fills)
        run_id, status, report_dir = run_federation(work, site_nodes([*big, small]), {"num-rounds": ROUNDS},
                                                    timeout_s=420, on_started=record)
        json_path, png_path = report_paths(report_dir, run_id)
        yield Federation(big, small, [f for f in fills if isinstance(f, PipelineFillReport)], fill_seconds, run_id,
                         status, json_path, png_path, read_report(json_path), seen)
    finally:
        drop_sites([*big, small])


def test_sites_were_filled_through_their_pipelines_by_the_simulators(federation: Federation) -> None:
    for fill, site, (n, _) in zip(federation.fills, [*federation.big, federation.small], [*BIG, SMALL], strict=True):
        assert fill.site_id == site.site_id and fill.participants == n
        assert fill.blocks > 0 and fill.readings > 0 and fill.lims_events > 0
        assert fill.sample_rows == fill.samples > 0  # every CRP result the LIMS sent reached the store
        assert fill.participants_stored == n
        assert fill.wearable_rows >= 0.9 * n * 11 * fill.days  # 11 day-window rows per participant-day
        with connect(site) as conn:  # pseudonymised on the way: no participant id or sample barcode downstream
            row = conn.execute("SELECT count(*) FILTER (WHERE participant_pseudonym LIKE 'P-%'"
                               " OR sample_pseudonym LIKE 'SMP-%'), count(*) FROM sample_features").fetchone()
        assert row is not None and row[0] == 0 and row[1] >= fill.samples
    print(f"\nfilled {len(federation.fills)} sites through their pipelines in {federation.fill_seconds:.0f} s: " +
          "; ".join(f"{f.site_id}: {f.participants} participants, {f.blocks} blocks, {f.readings} readings, "
                    f"{f.samples} CRP samples in {f.seconds:.0f} s" for f in federation.fills))


def test_federated_training_completes_with_metrics_of_every_site_and_round(federation: Federation) -> None:
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
    assert 0.0 <= global_auc <= 1.0 and math.isfinite(baselines["pooled_roc_auc"])

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
