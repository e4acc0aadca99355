"""The Flower ClientApp of a site: trains and evaluates on the site's own feature store, behind its egress guard.

Per message the ClientApp

1. reads its site from `context.node_config` (`site-id`, optional `database-url` and `min-participants`);
2. connects as the site's read-only role (`fl_reader_<site>`) and checks that the role can read nothing but the
   feature tables and views - else it declines, naming the violation;
3. builds the examples by SQL (`dataset.py`) and declines when fewer than the minimum number of participants
   (max of the run's and the site's own setting, 10 by default) would stand behind what it sends;
4. replies with model arrays and aggregate metrics only (`protocol.py`).

Client-side differential privacy: when the server's DP wrapper puts a clipping norm into the train config,
Flower's `fixedclipping_mod` clips the update before it leaves the site.
"""

from __future__ import annotations

import logging

import numpy as np
import psycopg
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from clinstream.core.config import get_settings
from clinstream.federated import metrics as m
from clinstream.federated import protocol as p
from clinstream.federated.config import SiteNodeConfig, TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES, SiteDataset, load_site_dataset
from clinstream.federated.model import Standardiser, TrainParams, column_sums, loss, train
from clinstream.federated.roles import connect_reader, privilege_violations, reader_url

log = logging.getLogger(__name__)

app = ClientApp()


class Declined(Exception):
    """The site does not take part in this round; the reason is sent to the server (no identifiers in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _site_of(context: Context) -> SiteNodeConfig:
    return SiteNodeConfig.from_node_config(context.node_config)


def _load(site: SiteNodeConfig, cfg: TaskConfig) -> SiteDataset:
    url = site.database_url or reader_url(get_settings().database_url, site.site_id)
    try:
        with connect_reader(site.site_id, url) as conn:
            violations = privilege_violations(conn, site.site_id)
            if violations:
                raise Declined("database role is broader than the feature views: " + "; ".join(violations))
            return load_site_dataset(conn, cfg)
    except psycopg.Error as exc:  # the class name only: server messages may quote values
        raise Declined(f"feature store not readable ({type(exc).__name__})") from None


def _check_cohort(data: SiteDataset, test: bool, site: SiteNodeConfig, cfg: TaskConfig) -> None:
    needed = max(cfg.min_participants, site.min_participants)
    have = data.participant_count(test)
    if have < needed:
        side = "held-out" if test else "training"
        raise Declined(f"only {have} {side} participants with examples; the minimum cohort is {needed}")


def _standardiser(data: SiteDataset, cfg: TaskConfig, config: ConfigRecord) -> Standardiser:
    if cfg.standardisation == "federated" and p.STD_MEAN in config:
        return Standardiser(np.asarray(config[p.STD_MEAN], dtype=np.float64),
                            np.asarray(config[p.STD_SCALE], dtype=np.float64))
    return Standardiser.fit(data.part(test=False)[0])


def _status(site_id: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord({p.STATUS_SITE: site_id, p.DECLINED: bool(reason), p.STATUS_REASON: reason})


def _site_id_or_unknown(context: Context) -> str:
    site = context.node_config.get("site-id")
    return site if isinstance(site, str) else "unknown"


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
    config: ConfigRecord = msg.content.config_records[p.CONFIG]
    site_id = _site_id_or_unknown(context)
    try:
        site = _site_of(context)
        cfg = TaskConfig.from_run_config(context.run_config)
        data = _load(site, cfg)
        _check_cohort(data, test=False, site=site, cfg=cfg)
        x, y = data.part(test=False)
        z = _standardiser(data, cfg, config).transform(x)
        mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
        params = TrainParams(cfg.local_epochs, cfg.learning_rate, cfg.l2, mu)
        start = p.model_from_record(arrays)
        model = train(start, z, y, params, anchor=start)
        metrics = MetricRecord({p.NUM_EXAMPLES: len(y), p.DECLINED: 0,
                                p.PARTICIPANTS: data.participant_count(test=False),
                                p.TRAIN_LOSS: loss(model, z, y, cfg.l2)})
        content = RecordDict({p.ARRAYS: p.model_to_record(model), p.METRICS: metrics, p.STATUS: _status(site_id)})
    except (Declined, ValueError) as exc:
        reason = exc.reason if isinstance(exc, Declined) else f"invalid configuration: {exc}"
        log.warning("site %s declines the training round: %s", site_id, reason)
        metrics = MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.PARTICIPANTS: 0, p.TRAIN_LOSS: 0.0})
        content = RecordDict({p.ARRAYS: arrays, p.METRICS: metrics, p.STATUS: _status(site_id, reason)})
    return Message(content=content, reply_to=msg)


def _bins(context: Context) -> int:
    try:
        return TaskConfig.from_run_config(context.run_config).score_bins
    except ValueError:
        return 0


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """The global model on the site's held-out participants: AUC, balanced accuracy, score histograms."""
    arrays: ArrayRecord = msg.content.array_records[p.ARRAYS]
    config: ConfigRecord = msg.content.config_records[p.CONFIG]
    site_id = _site_id_or_unknown(context)
    try:
        site = _site_of(context)
        cfg = TaskConfig.from_run_config(context.run_config)
        data = _load(site, cfg)
        _check_cohort(data, test=True, site=site, cfg=cfg)
        x, y = data.part(test=True)
        z = _standardiser(data, cfg, config).transform(x)
        model = p.model_from_record(arrays)
        scores = model.predict_proba(z)
        neg, pos = m.score_histograms(y, scores, cfg.score_bins) if cfg.score_bins else ([], [])
        metrics = MetricRecord({
            p.NUM_EXAMPLES: len(y), p.DECLINED: 0, p.PARTICIPANTS: data.participant_count(test=True),
            p.EVAL_LOSS: loss(model, z, y, 0.0), p.ROC_AUC: m.roc_auc(y, scores),
            p.BALANCED_ACCURACY: m.balanced_accuracy(y, scores), p.HIST_NEG: neg, p.HIST_POS: pos})
        content = RecordDict({p.METRICS: metrics, p.STATUS: _status(site_id)})
    except (Declined, ValueError) as exc:
        reason = exc.reason if isinstance(exc, Declined) else f"invalid configuration: {exc}"
        log.warning("site %s declines the evaluation round: %s", site_id, reason)
        empty = [0] * _bins(context)
        metrics = MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.PARTICIPANTS: 0, p.EVAL_LOSS: 0.0,
                                p.ROC_AUC: float("nan"), p.BALANCED_ACCURACY: float("nan"),
                                p.HIST_NEG: empty, p.HIST_POS: empty})
        content = RecordDict({p.METRICS: metrics, p.STATUS: _status(site_id, reason)})
    return Message(content=content, reply_to=msg)


@app.query()
def feature_statistics(msg: Message, context: Context) -> Message:
    """Per-feature counts, sums and sums of squares over the training participants (federated standardisation)."""
    site_id = _site_id_or_unknown(context)
    n_features = len(FEATURE_NAMES)
    try:
        site = _site_of(context)
        cfg = TaskConfig.from_run_config(context.run_config)
        data = _load(site, cfg)
        _check_cohort(data, test=False, site=site, cfg=cfg)
        x, _ = data.part(test=False)
        count, total, total_sq = column_sums(x)
        metrics = MetricRecord({p.NUM_EXAMPLES: len(x), p.DECLINED: 0, p.STAT_COUNT: count.tolist(),
                                p.STAT_SUM: total.tolist(), p.STAT_SUMSQ: total_sq.tolist()})
        content = RecordDict({p.METRICS: metrics, p.STATUS: _status(site_id)})
    except (Declined, ValueError) as exc:
        reason = exc.reason if isinstance(exc, Declined) else f"invalid configuration: {exc}"
        zeros = [0.0] * n_features
        metrics = MetricRecord({p.NUM_EXAMPLES: 0, p.DECLINED: 1, p.STAT_COUNT: zeros, p.STAT_SUM: zeros,
                                p.STAT_SUMSQ: zeros})
        content = RecordDict({p.METRICS: metrics, p.STATUS: _status(site_id, reason)})
    return Message(content=content, reply_to=msg)
