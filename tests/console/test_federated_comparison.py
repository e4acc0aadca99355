"""The federated demo's references: local-only models and a pooled reference over participant splits, and the
summary table that puts them beside the federated model."""

from __future__ import annotations

import math

import numpy as np

from clinstream.federated.config import TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES, SiteDataset, split_by_participant
from clinstream.federated.report import summary_rows
from clinstream_devtools.federated.demo import split_comparison


def _site(seed: int, people: int = 40, per_person: int = 6) -> SiteDataset:
    rng = np.random.default_rng(seed)
    participants = [f"{seed:02d}{i:062x}" for i in range(people) for _ in range(per_person)]
    x = rng.normal(size=(len(participants), len(FEATURE_NAMES)))
    y = (x[:, 0] + rng.normal(scale=1.0, size=len(participants)) > 0.5).astype(np.int8)
    cfg = TaskConfig()
    held_out = split_by_participant(participants, cfg.test_fraction, cfg.split_salt)
    return SiteDataset(x, y, participants, np.array([p in held_out for p in participants], dtype=bool))


def test_local_and_pooled_references_have_a_spread_over_participant_splits() -> None:
    cfg = TaskConfig()
    datasets = {"a": _site(1), "b": _site(2), "c": _site(3)}
    result = split_comparison(datasets, cfg, splits=5)
    assert result["splits"] == 5
    for site in datasets:
        spread = result["local_roc_auc"][site]
        assert spread["splits"] == 5 and spread["sd"] > 0 and spread["min"] <= spread["mean"] <= spread["max"]
    pooled = result["pooled_roc_auc_spread"]
    assert pooled["splits"] == 5 and pooled["sd"] > 0 and 0.5 < pooled["mean"] <= 1.0
    assert result["pooled_roc_auc"] == pooled["mean"]
    assert math.isclose(result["local_mean_roc_auc"], result["local_mean_roc_auc_spread"]["mean"])


def test_split_zero_is_the_federated_runs_own_split() -> None:
    cfg = TaskConfig()
    datasets = {"a": _site(1)}
    one = split_comparison(datasets, cfg, splits=1)
    # with one split the reference is trained on exactly the dataset's own (federated) split: no spread
    assert one["local_roc_auc"]["a"]["sd"] == 0.0 and one["local_roc_auc"]["a"]["splits"] == 1


def test_summary_puts_references_beside_the_federated_model() -> None:
    datasets = {"a": _site(1), "b": _site(2)}
    comparison = split_comparison(datasets, TaskConfig(), splits=3)
    report = {"final": {"global": {"roc_auc": 0.71, "balanced_accuracy": 0.66},
                        "sites": {"a": {"roc_auc": 0.7, "balanced_accuracy": 0.6, "declined": False},
                                  "b": {"declined": True, "reason": "too few participants"}}},
              "comparison": comparison}
    rows = summary_rows(report)
    models = [(r["model"], r["site"]) for r in rows]
    assert models[0] == ("federated", "all (global)") and rows[0]["roc_auc"] == "0.710"
    assert ("local-only", "a") in models and ("local-only", "mean of sites") in models
    assert ("pooled (demo only)", "all (union)") in models
    assert all(r["spread"] and "over 3 splits" in r["spread"] for r in rows if r["model"] != "federated")
    declined = next(r for r in rows if r["site"] == "b" and r["model"] == "federated")
    assert declined["roc_auc"] is None and "declined" in declined["spread"]
