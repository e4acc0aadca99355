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
from clinstream.federated.dataset import FEATURE_NAMES
from clinstream.federated.demo import prepare_site
from clinstream.federated.model import LogisticModel
from clinstream.federated.roles import reader_url

pytestmark = pytest.mark.integration


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
