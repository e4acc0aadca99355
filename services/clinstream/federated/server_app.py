"""The Flower ServerApp: optional federated standardisation, then FedAvg/FedProx rounds, then the run report.

It never sees data: only what `protocol.py` lets sites send. The report goes to `report-dir` (run config), or to
`<CLINSTREAM_DATA_DIR>/federated/reports` when that is empty.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from clinstream.core.config import get_settings
from clinstream.federated import protocol as p
from clinstream.federated.config import TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES
from clinstream.federated.report import build_report, write_report
from clinstream.federated.strategy import SiteAwareStrategy, build_strategy, parse_reply
from clinstream.federated.task import LogisticModel, Standardiser

app = ServerApp()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    """The connected node ids once at least `count` are connected (raises TimeoutError after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} SuperNodes connected")
        time.sleep(1.0)


def federated_standardiser(grid: Grid, cfg: TaskConfig, strategy: SiteAwareStrategy) -> Standardiser | None:
    """Global mean and scale per feature from the sites' sums (round 0, QUERY messages); None if all declined."""
    nodes = wait_for_nodes(grid, cfg.min_nodes, cfg.round_timeout_s)
    messages = [Message(content=RecordDict({p.CONFIG: ConfigRecord({"stage": "feature-statistics"})}),
                        message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    count = np.zeros(len(FEATURE_NAMES))
    total = np.zeros(len(FEATURE_NAMES))
    total_sq = np.zeros(len(FEATURE_NAMES))
    accepted = 0
    for msg in grid.send_and_receive(messages, timeout=cfg.round_timeout_s):
        reply = parse_reply(msg, 0, "stats")
        strategy.replies.append(reply)
        if reply.declined:
            log(WARNING, "feature statistics: site %s declined: %s", reply.site, reply.reason)
            continue
        count += np.asarray(reply.metrics[p.STAT_COUNT], dtype=np.float64)
        total += np.asarray(reply.metrics[p.STAT_SUM], dtype=np.float64)
        total_sq += np.asarray(reply.metrics[p.STAT_SUMSQ], dtype=np.float64)
        accepted += 1
    log(INFO, "feature statistics from %d sites", accepted)
    return Standardiser.from_sums(count, total, total_sq) if accepted else None


def report_dir(cfg: TaskConfig) -> Path:
    """Where this run's report goes."""
    if cfg.report_dir:
        return Path(cfg.report_dir)
    return get_settings().data_dir.resolve() / "federated" / "reports"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds and write the report."""
    started = _now()
    cfg = TaskConfig.from_run_config(context.run_config)
    strategy, described = build_strategy(cfg)
    train_config = ConfigRecord()
    evaluate_config = ConfigRecord()
    standardisation: dict[str, Any] = {"mode": cfg.standardisation}
    if cfg.standardisation == "federated":
        std = federated_standardiser(grid, cfg, strategy)
        if std is not None:
            for config in (train_config, evaluate_config):
                config[p.STD_MEAN] = std.mean.tolist()
                config[p.STD_SCALE] = std.scale.tolist()
            standardisation.update({"mean": std.mean.tolist(), "scale": std.scale.tolist()})
        else:
            standardisation["fallback"] = "site (every site declined the statistics round)"
    initial = p.model_to_record(LogisticModel.zeros(len(FEATURE_NAMES)))
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.num_rounds,
                            timeout=cfg.round_timeout_s, train_config=train_config, evaluate_config=evaluate_config)
    final_model = p.model_from_record(result.arrays) if result.arrays else LogisticModel.zeros(len(FEATURE_NAMES))
    task = {
        "question": "do the wearable features of the days before a blood sample predict CRP above the threshold?",
        "crp_threshold_mg_l": cfg.crp_threshold, "lookback_days": cfg.lookback_days,
        "recent_days": cfg.recent_days, "baseline_days": cfg.baseline_days, "window_kind": cfg.window_kind,
        "split": f"by participant (salted SHA-256 rank), test fraction {cfg.test_fraction}",
        "model": "class-weighted L2 logistic regression (numpy, full-batch gradient descent)",
        "features": list(FEATURE_NAMES),
        "final_model": {"coef": final_model.coef.tolist(), "intercept": final_model.intercept},
    }
    report = build_report(run_id=context.run_id, run_config=dict(context.run_config), strategy=described,
                          standardisation=standardisation, task=task, replies=strategy.replies,
                          global_metrics=strategy.global_metrics, started_at=started, finished_at=_now(),
                          num_rounds=cfg.num_rounds)
    json_path, _ = write_report(report, report_dir(cfg))
    log(INFO, "report written to %s", json_path)
