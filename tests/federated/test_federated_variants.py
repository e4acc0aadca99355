"""FedProx and differential privacy in a real two-round federation: a SuperLink and one SuperNode per site
over the sites' feature stores (filled in-process with synthetic cohorts, the fast source), run to completion.

Run by hand inside `flock /tmp/flower.lock` (Flower's ports are shared by everyone on the machine).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federated_harness import drop_sites, new_sites
from scipy.stats import chi2

from clinstream.core.config import Settings
from clinstream.federated.config import report_paths
from clinstream.federated.dataset import FEATURE_NAMES
from clinstream.federated.report import read_report
from clinstream_devtools.federated.demo import SYNTHETIC, prepare_sites, run_federation, site_nodes

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("flower")]  # Flower's fixed ports

ROUNDS = 2
PARTICIPANTS, DAYS = 16, 20
CLIPPING = 0.2
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


MU = 0.5
NOISE_MULTIPLIER, CLIPPING_NORM = 0.3, CLIPPING
FALSE_FAILURE = 1e-6  # of the noise test below, when the wrapper adds exactly the described noise


def test_fedprox_with_client_side_dp_runs_two_rounds_in_a_real_federation(
        sites: tuple[list[Settings], Path]) -> None:
    """One federation runs both: FedProx on the sites, inside Flower's client-side fixed-clipping DP wrapper (the
    sites clip their updates with Flower's mod, the server adds the noise). The report holds what happened, and the
    test checks each part of it:

    - FedProx: every site in every round reports the mu it trained with (0.5, sent by the server's FedProx) and a
      positive proximal penalty in its last training step. And the training did descend on the FedProx objective
      h(w) = loss(w) + mu/2 ||w - w_global||^2: in round 1 every site starts from the zero model, where h is the
      class-balanced log loss ln 2 (no L2, no proximal term), so its reported train loss + mu/2 ||update||^2 (its
      pre-clip update) must be below ln 2. Gradient steps that leave the proximal term out minimise the loss
      alone and move 2.4-2.7 away here (h 1.6-2.0), so this fails even if the penalty were still reported.
    - Clipping: every update the server received has norm min(the site's own pre-clip norm, the clipping norm), so
      at most the clipping norm; and at least one site's update was larger than it before clipping, else the test
      fails: clipping that never bites checks nothing. The clipping norm 0.2 lies below what these cohorts' sites
      send (pre-clip norms 0.46-0.61, printed by the test); the earlier 1.0 lay above all of them.
    - Noise: the server records, per round, the sum of squares of (published aggregate - weighted mean of the
      clipped updates) over the model's 31 coordinates. With sd = multiplier x clipping norm / sites, the sum over
      both rounds divided by sd^2 is chi-square with 62 degrees of freedom when the noise is as described; the
      test accepts it inside the two-sided central interval of probability 1 - 1e-6 (so it fails wrongly once in
      a million runs). No noise gives 0 (far below the lower bound, 21.8); noise of twice the sd exceeds the upper
      bound (132.4) with probability 0.999.
    """
    report = _run(sites, "fedprox-dp", {"strategy": "fedprox", "proximal-mu": MU, "dp": "client-fixed",
                                        "dp-noise-multiplier": NOISE_MULTIPLIER, "dp-clipping-norm": CLIPPING_NORM})
    site_ids = [s.site_id for s in sites[0]]
    trained = [rnd["train"][site] for rnd in report["rounds"] for site in site_ids]
    print("\n" + "\n".join(f"round {rnd['round']} {site[-1]}: pre-clip {e['update_norm']:.4f} received "
                            f"{e['received_update_norm']:.4f} mu {e['proximal_mu']} penalty {e['proximal_penalty']:.5f}"
                            for rnd in report["rounds"] for site, e in ((s, rnd["train"][s]) for s in site_ids)))

    assert [(e["proximal_mu"], e["proximal_penalty"] > 0) for e in trained] == [(MU, True)] * len(trained)
    first = report["rounds"][0]["train"]
    objective = {s: first[s]["train_loss"] + MU / 2 * first[s]["update_norm"] ** 2 for s in site_ids}
    assert max(objective.values()) < math.log(2), objective  # ln 2: the FedProx objective at round 1's zero model

    for e in trained:
        assert e["received_update_norm"] == pytest.approx(min(e["update_norm"], CLIPPING_NORM), rel=1e-9)
        assert e["received_update_norm"] <= CLIPPING_NORM * (1 + 1e-9)
    assert max(e["update_norm"] for e in trained) > CLIPPING_NORM

    sd = report["privacy"]["differential_privacy"]["noise_stddev"]
    assert sd == pytest.approx(NOISE_MULTIPLIER * CLIPPING_NORM / len(site_ids))
    noise = [rnd["dp_noise"] for rnd in report["rounds"]]
    dof = int(sum(n["coordinates"] for n in noise))
    assert dof == ROUNDS * (len(FEATURE_NAMES) + 1)
    statistic = sum(n["sum_of_squares"] for n in noise) / sd**2
    low, high = chi2.ppf(FALSE_FAILURE / 2, dof), chi2.isf(FALSE_FAILURE / 2, dof)
    assert low < statistic < high, f"noise sum of squares / sd^2 = {statistic:.3f}, chi2({dof}) {low:.1f}-{high:.1f}"
