"""The Flower ClientApp of a site: trains and evaluates on the site's own feature store, behind its egress guard.

Per message the ClientApp

1. reads its site from `context.node_config` (`site-id`, optional `database-url` and `min-participants`);
2. connects as the site's read-only role (`fl_reader_<site>`) and checks that the role can read nothing but the
   feature tables and views - else it declines, naming the violation;
3. builds the examples by SQL (`task.load_data`) and declines when fewer than the minimum number of participants
   (max of the run's and the site's own setting, 10 by default) would stand behind what it sends;
4. trains or evaluates (`task.py`) and replies with model arrays and aggregate metrics only (`protocol.py`).

The three handlers share their set-up (`_reply`): site, run config, data, and the declined reply on failure.

Client-side differential privacy: when the server's DP wrapper puts a clipping norm into the train config,
Flower's `fixedclipping_mod` clips the update before it leaves the site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from clinstream.federated import protocol as p
from clinstream.federated.config import SiteNodeConfig, TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES, SiteDataset
from clinstream.federated.task import Declined, Standardiser, TrainParams, column_sums, evaluate, load_data, loss, train

log = logging.getLogger(__name__)

app = ClientApp()

Records = dict[str, Any]  # the reply's records besides its status


@dataclass(frozen=True)
class _Round:
    """What every handler starts from: the run's task config, the site's data, and the server's round config."""

    cfg: TaskConfig
    data: SiteDataset
    config: ConfigRecord

    def standardised(self, test: bool) -> tuple[Any, Any]:
        """(z, y) of one side, standardised with the server's global statistics or the site's own."""
        x, y = self.data.part(test)
        if self.cfg.standardisation == "federated" and p.STD_MEAN in self.config:
            std = Standardiser(np.asarray(self.config[p.STD_MEAN], dtype=np.float64),
                               np.asarray(self.config[p.STD_SCALE], dtype=np.float64))
        else:
            std = Standardiser.fit(self.data.part(test=False)[0])
        return std.transform(x), y


def _status(site_id: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord({p.STATUS_SITE: site_id, p.DECLINED: bool(reason), p.STATUS_REASON: reason})


def _site_id_or_unknown(context: Context) -> str:
    site = context.node_config.get("site-id")
    return site if isinstance(site, str) else "unknown"


def _reply(msg: Message, context: Context, phase: str, test: bool, answer: Callable[[_Round], Records],
           declined: Callable[[], Records]) -> Message:
    """The set-up every handler shares: site, run config and data; a declined reply (with the reason) on failure."""
    site_id = _site_id_or_unknown(context)
    reason = ""
    try:
        site = SiteNodeConfig.from_node_config(context.node_config)
        cfg = TaskConfig.from_run_config(context.run_config)
        config = msg.content.config_records.get(p.CONFIG, ConfigRecord())
        records = answer(_Round(cfg, load_data(site, cfg, test), config))
    except (Declined, ValueError) as exc:
        reason = exc.reason if isinstance(exc, Declined) else f"invalid configuration: {exc}"
        log.warning("site %s declines the %s round: %s", site_id, phase, reason)
        records = declined()
    return Message(content=RecordDict({**records, p.STATUS: _status(site_id, reason)}), reply_to=msg)


def clip_if_requested(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side fixed clipping, applied when the server's DP wrapper sent a clipping norm.

    A declined reply (the arrays it was sent: a zero update, which Flower's clipping would divide by) and an error
    reply pass unclipped.
    """
    config = msg.content.config_records.get(p.CONFIG)
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    reply = call_next(msg, context)
    if reply.has_error() or reply.content.config_records.get(p.STATUS, ConfigRecord()).get(p.DECLINED):
        return reply
    sent = p.model_from_record(msg.content.array_records[p.ARRAYS])
    got = p.model_from_record(reply.content.array_records[p.ARRAYS])
    if np.array_equal(sent.coef, got.coef) and sent.intercept == got.intercept:
        return reply
    return fixedclipping_mod(msg, context, lambda _msg, _context: reply)


@app.train(mods=[clip_if_requested])
def train_round(msg: Message, context: Context) -> Message:
    """Local training from the global model on the site's training participants."""
    arrays: ArrayRecord = msg.content.array_records[p.ARRAYS]

    def answer(r: _Round) -> Records:
        z, y = r.standardised(test=False)
        mu = float(r.config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
        start = p.model_from_record(arrays)
        model = train(start, z, y, TrainParams(r.cfg.local_epochs, r.cfg.learning_rate, r.cfg.l2, mu), anchor=start)
        return {p.ARRAYS: p.model_to_record(model),
                p.METRICS: MetricRecord({p.NUM_EXAMPLES: len(y), p.DECLINED: 0,
                                         p.PARTICIPANTS: r.data.participant_count(test=False),
                                         p.TRAIN_LOSS: loss(model, z, y, r.cfg.l2)})}

    def declined() -> Records:
        return {p.ARRAYS: arrays,
                p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.PARTICIPANTS: 0, p.TRAIN_LOSS: 0.0})}

    return _reply(msg, context, "training", test=False, answer=answer, declined=declined)


def _bins(context: Context) -> int:
    try:
        return TaskConfig.from_run_config(context.run_config).score_bins
    except ValueError:
        return 0


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """The global model on the site's held-out participants: AUC, balanced accuracy, score histograms."""
    model = p.model_from_record(msg.content.array_records[p.ARRAYS])

    def answer(r: _Round) -> Records:
        z, y = r.standardised(test=True)
        scored = evaluate(model, z, y, r.cfg.score_bins)
        return {p.METRICS: MetricRecord({
            p.NUM_EXAMPLES: len(y), p.DECLINED: 0, p.PARTICIPANTS: r.data.participant_count(test=True),
            p.EVAL_LOSS: scored.loss, p.ROC_AUC: scored.roc_auc, p.BALANCED_ACCURACY: scored.balanced_accuracy,
            p.HIST_NEG: scored.hist_neg, p.HIST_POS: scored.hist_pos})}

    def declined() -> Records:
        empty = [0] * _bins(context)
        return {p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.PARTICIPANTS: 0, p.EVAL_LOSS: 0.0,
                                         p.ROC_AUC: float("nan"), p.BALANCED_ACCURACY: float("nan"),
                                         p.HIST_NEG: empty, p.HIST_POS: empty})}

    return _reply(msg, context, "evaluation", test=True, answer=answer, declined=declined)


@app.query()
def feature_statistics(msg: Message, context: Context) -> Message:
    """Per-feature counts, sums and sums of squares over the training participants (federated standardisation)."""

    def answer(r: _Round) -> Records:
        x, _ = r.data.part(test=False)
        count, total, total_sq = column_sums(x)
        return {p.METRICS: MetricRecord({p.NUM_EXAMPLES: len(x), p.DECLINED: 0, p.STAT_COUNT: count.tolist(),
                                         p.STAT_SUM: total.tolist(), p.STAT_SUMSQ: total_sq.tolist()})}

    def declined() -> Records:
        zeros = [0.0] * len(FEATURE_NAMES)
        return {p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.STAT_COUNT: zeros, p.STAT_SUM: zeros,
                                         p.STAT_SUMSQ: zeros})}

    return _reply(msg, context, "feature-statistics", test=False, answer=answer, declined=declined)
