"""Pure logic of the federated layer: metrics, standardisation, split, model, config, strategy, commands, app."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from clinstream.core import constants as c
from clinstream.federated import metrics as m
from clinstream.federated import protocol as p
from clinstream.federated.config import SiteNodeConfig, TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES, split_by_participant
from clinstream.federated.deployment import APP_DIR, superlink_command, supernode_command, write_connection
from clinstream.federated.strategy import SiteReply, global_evaluation
from clinstream.federated.task import LogisticModel, Standardiser, TrainParams, column_sums, loss, train
from clinstream_devtools.federated.synthetic import CohortSpec, generate_site, synthetic_pseudonym
from clinstream_devtools.simulate.profiles import make_participant

labels_and_scores = st.integers(2, 80).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 1), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5001, 0.75, 0.9, 1.0]) | st.floats(0, 1), min_size=n,
             max_size=n)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn on single-class samples
@settings(max_examples=200, deadline=None)
@given(labels_and_scores)
def test_site_metrics_match_scikit_learn(data: tuple[list[int], list[float]]) -> None:
    y = np.array(data[0], dtype=np.int8)
    s = np.array(data[1])
    if y.min() == y.max():
        assert math.isnan(m.roc_auc(y, s))
    else:
        assert m.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.balanced_accuracy(y, s) == pytest.approx(
        balanced_accuracy_score(y, (s >= 0.5).astype(int)), abs=1e-12)


def test_pooled_auc_from_histograms_is_the_auc_of_binned_scores() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500).astype(np.int8)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    neg, pos = m.score_histograms(y, s, 1000)
    assert m.auc_from_histograms(neg, pos) == pytest.approx(m.roc_auc(y, np.floor(s * 1000) / 1000), abs=1e-9)
    neg20, pos20 = m.score_histograms(y, s, 20)
    assert abs(m.auc_from_histograms(neg20, pos20) - m.roc_auc(y, s)) < 0.02
    assert sum(neg20) + sum(pos20) == len(y)
    assert m.balanced_accuracy_from_histograms(neg20, pos20) == pytest.approx(m.balanced_accuracy(y, s))
    assert math.isnan(m.auc_from_histograms([1, 2], [0, 0]))


def test_standardiser_from_site_sums_equals_fit_on_the_union() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.normal(i, 1 + i, (30 + 10 * i, 4)) for i in range(3)]
    parts[1][::3, 2] = np.nan
    sums = [column_sums(x) for x in parts]
    merged = Standardiser.from_sums(*(np.sum([s[k] for s in sums], axis=0) for k in range(3)))
    union = Standardiser.fit(np.vstack(parts))
    np.testing.assert_allclose(merged.mean, union.mean)
    np.testing.assert_allclose(merged.scale, union.scale)
    z = union.transform(np.vstack(parts))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(np.nanmean(np.where(np.isnan(np.vstack(parts)), np.nan, z), axis=0), 0, atol=1e-9)


@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=60, unique=True),
       st.floats(0.1, 0.9))
def test_split_is_by_participant_exact_and_deterministic(people: list[str], fraction: float) -> None:
    examples = people * 3  # several examples per participant
    held_out = split_by_participant(examples, fraction, "salt")
    assert held_out == split_by_participant(list(reversed(examples)), fraction, "salt")
    assert len(held_out) == min(max(round(fraction * len(people)), 1), len(people) - 1)
    assert held_out < set(people)


def test_training_reduces_the_class_weighted_loss_and_fedprox_stays_closer() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5))
    y = (z[:, 0] + 0.5 * rng.normal(size=200) > 1.0).astype(np.int8)  # imbalanced
    start = LogisticModel.zeros(5)
    fitted = train(start, z, y, TrainParams(100, 0.5, 0.01))
    assert loss(fitted, z, y, 0.01) < loss(start, z, y, 0.01)
    assert m.roc_auc(y, fitted.predict_proba(z)) > 0.8
    anchor = LogisticModel(np.ones(5), 0.0)
    free = train(anchor, z, y, TrainParams(100, 0.5, 0.01))
    prox = train(anchor, z, y, TrainParams(100, 0.5, 0.01, proximal_mu=1.0), anchor=anchor)
    assert np.linalg.norm(prox.coef - anchor.coef) < np.linalg.norm(free.coef - anchor.coef)
    assert p.model_from_record(p.model_to_record(fitted)).coef.tolist() == fitted.coef.tolist()


def test_task_config_defaults_are_the_apps_run_config() -> None:
    app_config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert TaskConfig.from_run_config(app_config) == TaskConfig()
    assert set(app_config) == set(TaskConfig().as_run_config())
    assert TaskConfig().crp_threshold == 5.0 and TaskConfig().min_participants == 10
    assert TaskConfig.from_run_config({"crp-threshold": 3, "strategy": "fedprox"}).crp_threshold == 3.0
    for bad in ({"strategy": "sgd"}, {"dp": "local"}, {"test-fraction": 1.0}, {"min-participants": 0}):
        with pytest.raises(ValueError):
            TaskConfig.from_run_config(bad)


def test_the_flower_app_validates_offline() -> None:
    from flwr.cli.config_utils import load_and_validate

    config, _ = load_and_validate(APP_DIR / "pyproject.toml", check_module=True)
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "clinstream.federated.client_app:app"
    assert "federations" not in config["tool"]["flwr"]  # flwr 1.42 would migrate (rewrite) this file
    assert sorted(path.name for path in APP_DIR.iterdir()) == ["pyproject.toml"]


def test_node_config_round_trips_through_flowers_parser() -> None:
    from flwr.common.config import parse_config_args

    node = SiteNodeConfig("site-a", "host=127.0.0.1 port=15432 user=fl_reader_site_a", 12)
    parsed = parse_config_args([node.as_node_config()])
    assert SiteNodeConfig.from_node_config(parsed) == node
    with pytest.raises(ValueError):
        SiteNodeConfig.from_node_config({})


def test_commands_use_explicit_non_default_ports_without_ray() -> None:
    link = superlink_command()
    node = supernode_command(SiteNodeConfig("site-a"), c.FLOWER_CLIENTAPPIO_BASE_PORT)
    flower_defaults = {"9091", "9092", "9093", "9094", "8000"}
    for cmd in (link, node):
        assert not flower_defaults & {a.rsplit(":", 1)[-1] for a in cmd}
        assert "--insecure" in cmd and not any("ray" in a.lower() for a in cmd)
    assert link[link.index("--port") + 1] == str(c.FLOWER_SUPERLINK_PORT)
    assert "--disable-runtime-dependency-installation" in link
    assert node[node.index("--superlink") + 1] == f"127.0.0.1:{c.FLOWER_SUPERLINK_PORT}"
    assert {c.KAFKA_BROKER_PORT, c.KAFKA_CONTROLLER_PORT, c.POSTGRES_PORT}.isdisjoint(
        {c.FLOWER_SUPERLINK_PORT, c.FLOWER_CLIENTAPPIO_BASE_PORT})


def test_tls_flags_replace_insecure(tmp_path: Path) -> None:
    from clinstream.federated.deployment import Tls

    tls = Tls(tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "site-a.key")
    link = superlink_command(tls=tls)
    node = supernode_command(SiteNodeConfig("site-a"), 19201, tls=tls)
    assert "--insecure" not in link and "--enable-supernode-auth" in link and "--ssl-certfile" in link
    assert "--insecure" not in node and "--root-certificates" in node and "--auth-supernode-private-key" in node
    text = write_connection(tmp_path / "home", "link.example:19192", tls).read_text()
    assert "root-certificates" in text and "insecure" not in text


def test_global_evaluation_ignores_declines_and_pools_histograms() -> None:
    def reply(site: str, declined: bool, n: int, auc: float, neg: list[int], pos: list[int]) -> SiteReply:
        return SiteReply(1, "evaluate", site, declined, "too small" if declined else "",
                         {p.NUM_EXAMPLES: n, p.ROC_AUC: auc, p.BALANCED_ACCURACY: 0.5, p.EVAL_LOSS: 0.1,
                          p.HIST_NEG: neg, p.HIST_POS: pos})

    out = global_evaluation([reply("a", False, 4, 1.0, [2, 0], [0, 2]), reply("b", False, 4, 0.5, [1, 1], [1, 1]),
                             reply("c", True, 0, math.nan, [0, 0], [0, 0])])
    assert out[p.NUM_EXAMPLES] == 8 and out["sites"] == 2
    assert out[f"{p.ROC_AUC}-weighted-mean"] == pytest.approx(0.75)
    assert out[p.ROC_AUC] == pytest.approx(m.auc_from_histograms([3, 1], [1, 3]))


def test_synthetic_cohort_is_deterministic_and_independent_of_the_site_id() -> None:
    a = generate_site(CohortSpec("site-a", participants=2, days=20, seed=5))
    b = generate_site(CohortSpec("site-b", participants=2, days=20, seed=5))
    assert [t.crp_mg_l for t in a.truth] == [t.crp_mg_l for t in b.truth] and a.truth
    assert a.participants == b.participants and all(len(x) == 64 for x in a.participants)
    again = generate_site(CohortSpec("site-a", participants=2, days=20, seed=5))
    assert [r.value for r in again.records] == [r.value for r in a.records]
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))


def test_synthetic_cohort_has_the_simulators_physiology() -> None:
    """The federated fills use the simulators' one model: each sample's flare is its participant's profile flare,
    and CRP rises with it as in the LIMS simulator."""
    seed, n = 7, 4
    site = generate_site(CohortSpec("site-a", participants=n, days=30, seed=seed))
    people = {synthetic_pseudonym(seed, "participant", f"P-{i:06d}"): make_participant(seed, i) for i in range(n)}
    assert len({t.participant for t in site.truth}) == n
    for truth in site.truth:
        assert truth.flare_intensity == people[truth.participant].flare_level(truth.collected_ms)
    in_flare = [t.crp_mg_l for t in site.truth if t.flare_intensity >= 0.5]
    assert in_flare and min(in_flare) > c.CRP_FLARE_MG_L

