"""The ClientApp in-process over a real feature store: cohort guard, role guard, reply contract, client-side DP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from federated_harness import context, drop_sites, message, new_sites
from flwr.app import ConfigRecord, MessageType, RecordDict

from clinstream.core.config import Settings
from clinstream.federated import protocol as p
from clinstream.federated.client_app import app
from clinstream.federated.config import TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES
from clinstream.federated.roles import reader_url
from clinstream.federated.strategy import build_strategy
from clinstream.federated.task import LogisticModel
from clinstream_devtools.federated.demo import prepare_site

pytestmark = pytest.mark.integration
NO_CLIPPING = 1e6  # a clipping norm no update reaches: the DP wrapper is in the path but changes nothing


@pytest.fixture(scope="module")
def small_site() -> Iterator[Settings]:
    (site,) = new_sites("small")
    try:
        prepare_site(site, participants=6, days=30, seed=7)
        yield site
    finally:
        drop_sites([site])


def _node(site: Settings, **extra: Any) -> dict[str, Any]:
    return {"site-id": site.site_id, "database-url": reader_url(site.database_url, site.site_id), **extra}


def _status(reply: Any) -> dict[str, Any]:
    return dict(reply.content.config_records[p.STATUS])


def _metrics(reply: Any) -> dict[str, Any]:
    return dict(reply.content.metric_records[p.METRICS])


def _train_message(config: dict[str, Any] | None = None) -> Any:
    model = LogisticModel(np.full(len(FEATURE_NAMES), 0.1), 0.2)
    return message(MessageType.TRAIN, RecordDict({p.ARRAYS: p.model_to_record(model),
                                                  p.CONFIG: ConfigRecord({"server-round": 1, **(config or {})})}))


def _evaluate_message() -> Any:
    model = LogisticModel(np.full(len(FEATURE_NAMES), 0.1), 0.2)
    return message(MessageType.EVALUATE, RecordDict({p.ARRAYS: p.model_to_record(model),
                                                     p.CONFIG: ConfigRecord({"server-round": 1})}))


def test_small_site_declines_training_and_evaluation_and_says_why(small_site: Settings) -> None:
    reply = app(_train_message(), context(_node(small_site)))  # default minimum cohort: 10
    status = _status(reply)
    metrics = _metrics(reply)
    assert status[p.DECLINED] is True
    assert status[p.STATUS_REASON] == "only 4 training participants with examples; the minimum cohort is 10"
    assert status[p.STATUS_SITE] == small_site.site_id
    assert metrics[p.DECLINED] == 1 and metrics[p.NUM_EXAMPLES] == 0
    # it returns the arrays it was sent: zero weight, no information
    sent = p.model_from_record(reply.content.array_records[p.ARRAYS])
    assert np.allclose(sent.coef, 0.1) and sent.intercept == pytest.approx(0.2)

    reply = app(_evaluate_message(), context(_node(small_site)))
    assert _status(reply)[p.STATUS_REASON] == "only 2 held-out participants with examples; the minimum cohort is 10"
    assert _metrics(reply)[p.NUM_EXAMPLES] == 0


def test_taking_part_and_declining_replies_have_the_same_keys(small_site: Settings) -> None:
    taking_part = app(_train_message(), context(_node(small_site), {"min-participants": 2}))
    declining = app(_train_message(), context(_node(small_site), {"min-participants": 20}))
    assert _status(taking_part)[p.DECLINED] is False
    assert _metrics(taking_part)[p.NUM_EXAMPLES] > 0
    assert set(_metrics(taking_part)) == set(_metrics(declining)) == set(p.TRAIN_KEYS)
    assert set(taking_part.content.array_records[p.ARRAYS].keys()) == {"coef", "intercept"}
    # only model arrays, aggregate metrics and the status leave the site
    assert set(taking_part.content.keys()) == {p.ARRAYS, p.METRICS, p.STATUS}

    evaluated = app(_evaluate_message(), context(_node(small_site), {"min-participants": 2}))
    metrics = _metrics(evaluated)
    assert set(metrics) == set(p.EVAL_KEYS)
    assert sum(metrics[p.HIST_NEG]) + sum(metrics[p.HIST_POS]) == metrics[p.NUM_EXAMPLES]


def test_the_sites_own_floor_wins_over_a_lower_run_setting(small_site: Settings) -> None:
    reply = app(_train_message(), context(_node(small_site, **{"min-participants": 5}), {"min-participants": 2}))
    assert _status(reply)[p.STATUS_REASON] == "only 4 training participants with examples; the minimum cohort is 5"


def test_a_client_app_connected_as_the_owner_declines(small_site: Settings) -> None:
    node = {"site-id": small_site.site_id, "database-url": small_site.database_url}
    reply = app(_train_message(), context(node, {"min-participants": 2}))
    reason = _status(reply)[p.STATUS_REASON]
    assert _status(reply)[p.DECLINED] is True
    assert reason.startswith("database role is broader than the feature views:") and "reads erasure_audit" in reason


def test_an_unreachable_store_declines_without_leaking_the_error_text(small_site: Settings) -> None:
    node = {"site-id": small_site.site_id, "database-url": "postgresql://fl_reader_nobody@127.0.0.1:1/clinstream"}
    reply = app(_train_message(), context(node, {"min-participants": 2}))
    assert _status(reply)[p.STATUS_REASON] == "feature store not readable (OperationalError)"


def test_client_side_clipping_applies_when_the_dp_wrapper_asks(small_site: Settings) -> None:
    reply = app(_train_message({"clipping_norm": 0.001}), context(_node(small_site), {"min-participants": 2}))
    sent = LogisticModel(np.full(len(FEATURE_NAMES), 0.1), 0.2)
    got = p.model_from_record(reply.content.array_records[p.ARRAYS])
    delta = np.concatenate([got.coef - sent.coef, [got.intercept - sent.intercept]])
    assert 0 < np.linalg.norm(delta) <= 0.001 + 1e-9


def test_client_side_clipping_lets_a_decline_through(small_site: Settings) -> None:
    reply = app(_train_message({"clipping_norm": 0.001}), context(_node(small_site)))  # minimum cohort 10
    assert not reply.has_error()
    assert _status(reply)[p.DECLINED] is True


def test_feature_statistics_for_federated_standardisation(small_site: Settings) -> None:
    reply = app(message(MessageType.QUERY, RecordDict({p.CONFIG: ConfigRecord({})})),
                context(_node(small_site), {"min-participants": 2}))
    metrics = _metrics(reply)
    assert len(metrics[p.STAT_SUM]) == len(FEATURE_NAMES)
    assert max(metrics[p.STAT_COUNT]) == metrics[p.NUM_EXAMPLES] > 0


class _OneSiteGrid:
    """The one call a strategy's configure_train makes of the SuperLink's grid: which nodes are connected."""

    def get_node_ids(self) -> list[int]:
        return [1]


def _update_norm_after_a_round(site: Settings, strategy_name: str, dp: str) -> float:
    """The norm of the site's local update when the server's strategy configures the round (no hand-made config)."""
    cfg = TaskConfig(strategy=strategy_name, dp=dp, dp_clipping_norm=NO_CLIPPING, min_nodes=1)
    strategy, _ = build_strategy(cfg)
    sent = LogisticModel(np.full(len(FEATURE_NAMES), 0.1), 0.2)
    [instruction] = strategy.configure_train(1, p.model_to_record(sent), ConfigRecord({"server-round": 1}),
                                             _OneSiteGrid())  # type: ignore[arg-type]
    run_config = {**cfg.as_run_config(), "min-participants": 2}
    reply = app(message(MessageType.TRAIN, instruction.content), context(_node(site), run_config))
    assert _status(reply)[p.DECLINED] is False
    got = p.model_from_record(reply.content.array_records[p.ARRAYS])
    return float(np.linalg.norm(np.concatenate([got.coef - sent.coef, [got.intercept - sent.intercept]])))


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity the ServerApp's runtime gives its process (a strategy's instruction messages carry it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.mark.usefixtures("server_task")
@pytest.mark.parametrize("dp", ["off", "client-fixed"])
def test_fedprox_pulls_the_sites_update_toward_the_global_model(small_site: Settings, dp: str) -> None:
    """FedProx (McMahan-style FedAvg plus the proximal term mu/2 ||w - w_global||^2, Li et al. 2020): from the same
    global model on the same data, the FedProx round's local update is shorter than the FedAvg round's. Fails when
    the server does not send mu, the site ignores it, or the training step drops the term."""
    fedavg = _update_norm_after_a_round(small_site, "fedavg", dp)
    fedprox = _update_norm_after_a_round(small_site, "fedprox", dp)
    print(f"\nlocal update norm, dp={dp}: FedAvg {fedavg:.4f}, FedProx (mu={TaskConfig().proximal_mu}) {fedprox:.4f}")
    assert 0 < fedprox < fedavg
