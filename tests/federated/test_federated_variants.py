"""FedProx and differential privacy in a real two-round federation: a SuperLink and one SuperNode per site
over the sites' feature stores (filled in-process with synthetic cohorts, the fast source), run to completion.

Run by hand inside `flock /tmp/flower.lock` (Flower's ports are shared by everyone on the machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federated_harness import drop_sites, new_sites

from clinstream.core.config import Settings
from clinstream.federated.config import report_paths
from clinstream.federated.report import read_report
from clinstream_devtools.federated.demo import SYNTHETIC, prepare_sites, run_federation, site_nodes

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("flower")]  # Flower's fixed ports

ROUNDS = 2
PARTICIPANTS, DAYS = 16, 20
MIN_COHORT = 3  # small synthetic sites: each takes part (the refusal of a small site is tested elsewhere)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Settings], Path]]:
    work = tmp_path_factory.mktemp("federation-variants")
    sites = new_sites("a", "b", "c")
    try:
        prepare_sites([(site, PARTICIPANTS, seed) for seed, site in enumerate(sites, 1)], days=DAYS, source=SYNTHETIC)
        yield sites, work
    finally:
        drop_sites(sites)


def _run(sites: tuple[list[Settings], Path], name: str, config: dict[str, Any]) -> dict[str, Any]:
    big, work = sites
    nodes = site_nodes(big, {s.site_id: MIN_COHORT for s in big})
    run_id, status, report_dir = run_federation(work / name, nodes,
                                                {"num-rounds": ROUNDS, "min-participants": MIN_COHORT, **config},
                                                timeout_s=300)
    assert status == "finished:completed"
    report = read_report(report_paths(report_dir, run_id)[0])
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for rnd in report["rounds"]:
        for site in (s.site_id for s in big):
            assert not rnd["train"][site]["declined"] and rnd["train"][site]["num_examples"] > 0
            assert not rnd["evaluate"][site]["declined"]
        assert rnd["global"]["sites"] == len(big)
    assert report["declines"] == []
    return report


def test_fedprox_with_client_side_dp_runs_two_rounds_in_a_real_federation(
        sites: tuple[list[Settings], Path]) -> None:
    """One federation runs both: FedProx on the sites, inside Flower's client-side fixed-clipping DP wrapper
    (the sites clip their updates with Flower's mod, the server adds the noise). The arithmetic of each is tested
    exactly in test_federated_aggregation.py; here they run together through SuperLink and SuperNodes."""
    report = _run(sites, "fedprox-dp", {"strategy": "fedprox", "proximal-mu": 0.5, "dp": "client-fixed",
                                        "dp-noise-multiplier": 0.3, "dp-clipping-norm": 1.0})
    assert report["strategy"]["name"] == "fedprox" and report["strategy"]["proximal_mu"] == 0.5
    dp = report["privacy"]["differential_privacy"]
    assert dp["mode"] == "client-fixed" and dp["wrapper"] == "DifferentialPrivacyClientSideFixedClipping"
    assert dp["noise_stddev"] == pytest.approx(0.3 * 1.0 / 3)
