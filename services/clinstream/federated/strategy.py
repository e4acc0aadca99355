"""Server-side strategy: FedAvg or FedProx (optionally inside Flower's DP wrapper) behind a decline-aware guard.

`SiteAwareStrategy` wraps the configured Flower strategy. It records every site's reply per round (for the report),
takes declined replies (and failed ones) out before the inner strategy aggregates, so that a declining site never
weighs in and a round in which every site declines keeps the previous model, and it computes the global evaluation
metrics: the pooled ROC AUC and balanced accuracy from the sites' score histograms plus the example-weighted means.

It also records what the server observed, so that a run shows what its privacy and FedProx settings did: per
round and site the L2 norm of the update it received (after the site's clipping, under client-side DP), and per
round under DP the noise the wrapper actually added (published aggregate minus the plain weighted mean of the
updates it aggregated), kept as its coordinate count and sum of squares only: the noise vector itself would let a
reader of the report subtract it and undo the privacy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from clinstream.federated import metrics as m
from clinstream.federated import protocol as p
from clinstream.federated.config import TaskConfig


@dataclass
class SiteReply:
    """One site's reply in one phase of one round, as the report shows it."""

    round: int
    phase: str  # train | evaluate | stats
    site: str
    declined: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    received_update_norm: float | None = None  # train: the L2 norm of the update the server got (after any clipping)


def _metric_dict(record: MetricRecord) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in record.items()}


def parse_reply(msg: Message, server_round: int, phase: str) -> SiteReply:
    """A reply as a SiteReply (a failed message counts as declined, with Flower's error as the reason)."""
    if msg.has_error():
        return SiteReply(server_round, phase, f"node-{msg.metadata.src_node_id}", True,
                         f"error reply: {msg.error.reason}")
    content = msg.content
    status = content.config_records.get(p.STATUS, ConfigRecord())
    record = next(iter(content.metric_records.values()), MetricRecord())
    declined = bool(status.get(p.DECLINED, False)) or float(record.get(p.DECLINED, 0)) > 0  # type: ignore[arg-type]
    return SiteReply(server_round, phase, str(status.get(p.STATUS_SITE, f"node-{msg.metadata.src_node_id}")),
                     declined, str(status.get(p.STATUS_REASON, "")), _metric_dict(record))


def global_evaluation(replies: list[SiteReply]) -> dict[str, float]:
    """Pooled and weighted-mean metrics of the accepted evaluation replies."""
    accepted = [r for r in replies if not r.declined]
    n = np.array([float(r.metrics.get(p.NUM_EXAMPLES, 0)) for r in accepted])
    out: dict[str, float] = {p.NUM_EXAMPLES: float(n.sum()), "sites": float(len(accepted))}
    if not accepted or n.sum() == 0:
        return out
    for key in (p.ROC_AUC, p.BALANCED_ACCURACY, p.EVAL_LOSS):
        values = np.array([float(r.metrics.get(key, math.nan)) for r in accepted])
        ok = np.isfinite(values)
        out[f"{key}-weighted-mean"] = float((values[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else math.nan
    hists = [(r.metrics.get(p.HIST_NEG) or [], r.metrics.get(p.HIST_POS) or []) for r in accepted]
    if all(len(neg) and len(neg) == len(hists[0][0]) for neg, _ in hists):
        neg_total = np.sum([np.asarray(neg, dtype=np.float64) for neg, _ in hists], axis=0)
        pos_total = np.sum([np.asarray(pos, dtype=np.float64) for _, pos in hists], axis=0)
        out[p.ROC_AUC] = m.auc_from_histograms(neg_total, pos_total)
        out[p.BALANCED_ACCURACY] = m.balanced_accuracy_from_histograms(neg_total, pos_total)
    else:  # histograms switched off: the weighted means stand in
        out[p.ROC_AUC] = out[f"{p.ROC_AUC}-weighted-mean"]
        out[p.BALANCED_ACCURACY] = out[f"{p.BALANCED_ACCURACY}-weighted-mean"]
    return out


class SiteAwareStrategy(Strategy):
    """Delegates to an inner strategy; records per-site replies, drops declines, computes global metrics."""

    def __init__(self, inner: Strategy, weighted_by: str = p.NUM_EXAMPLES) -> None:
        super().__init__()
        self.inner = inner
        self.weighted_by = weighted_by
        self.replies: list[SiteReply] = []
        self.global_metrics: dict[int, dict[str, float]] = {}
        self.dp_noise: dict[int, dict[str, float]] = {}  # round -> coordinates, sum of squares of the added noise
        self._sent: dict[int, ArrayRecord] = {}  # round -> the global model sent out for training

    def summary(self) -> None:
        """Log the inner strategy's summary."""
        log(INFO, "\t├──> Site-aware wrapper (declines are recorded and not aggregated)")
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Delegate to the inner strategy; remember the model sent out (updates are measured from it)."""
        self._sent[server_round] = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Delegate to the inner strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def _split(self, server_round: int, replies: Iterable[Message], phase: str) -> list[tuple[Message, SiteReply]]:
        accepted: list[tuple[Message, SiteReply]] = []
        for msg in replies:
            reply = parse_reply(msg, server_round, phase)
            self.replies.append(reply)
            if reply.declined:
                log(WARNING, "round %d %s: site %s declined: %s", server_round, phase, reply.site, reply.reason)
            else:
                accepted.append((msg, reply))
        return accepted

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the accepted replies only; None (keep the model) when every site declined."""
        accepted = self._split(server_round, replies, "train")
        if not accepted:
            log(WARNING, "round %d: no site took part in training; the global model is unchanged", server_round)
            return None, None
        sent = self._sent.pop(server_round, None)
        if sent is not None:
            for msg, reply in accepted:
                reply.received_update_norm = p.update_norm(sent, msg.content.array_records[p.ARRAYS])
        messages = [msg for msg, _ in accepted]
        arrays, metrics = self.inner.aggregate_train(server_round, messages)
        if arrays is not None and isinstance(self.inner, DifferentialPrivacyFixedClippingBase):
            self.dp_noise[server_round] = _noise_added(arrays, messages, self.weighted_by)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Global metrics of the accepted replies (pooled AUC from the histograms)."""
        self._split(server_round, replies, "evaluate")
        current = [r for r in self.replies if r.round == server_round and r.phase == "evaluate"]
        metrics = global_evaluation(current)
        self.global_metrics[server_round] = metrics
        if not any(not r.declined for r in current):
            return None
        return MetricRecord({k: v for k, v in metrics.items() if math.isfinite(v)})


def _noise_added(published: ArrayRecord, aggregated: list[Message], weighted_by: str) -> dict[str, float]:
    """Coordinate count and sum of squares of published - (weighted mean of the replies as aggregated).

    The replies' arrays are read after the DP wrapper aggregated them: under server-side clipping the wrapper has
    replaced them by their clipped versions, so the mean is of the clipped updates in both modes; Flower's own
    weighted mean computes it, with the same arithmetic as the inner FedAvg/FedProx.
    """
    plain = aggregate_arrayrecords([msg.content for msg in aggregated], weighted_by)
    noise = np.concatenate([(got - mean).ravel() for got, mean in
                            zip(published.to_numpy_ndarrays(), plain.to_numpy_ndarrays(), strict=True)])
    return {"coordinates": float(noise.size), "sum_of_squares": float(noise @ noise)}


def build_strategy(cfg: TaskConfig) -> tuple[SiteAwareStrategy, dict[str, Any]]:
    """The configured strategy and a description of it (strategy, weighting, DP parameters) for the report."""
    common: dict[str, Any] = {
        "fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes, "min_available_nodes": cfg.min_nodes,
        "weighted_by_key": p.NUM_EXAMPLES,
    }
    inner: Strategy = FedProx(proximal_mu=cfg.proximal_mu, **common) if cfg.strategy == "fedprox" \
        else FedAvg(**common)
    described: dict[str, Any] = {"name": cfg.strategy, "weighted_by": p.NUM_EXAMPLES, "min_nodes": cfg.min_nodes}
    if cfg.strategy == "fedprox":
        described["proximal_mu"] = cfg.proximal_mu
    privacy: dict[str, Any] = {"mode": cfg.dp}
    if cfg.dp != "off":
        wrapper = DifferentialPrivacyClientSideFixedClipping if cfg.dp == "client-fixed" \
            else DifferentialPrivacyServerSideFixedClipping
        inner = wrapper(inner, noise_multiplier=cfg.dp_noise_multiplier, clipping_norm=cfg.dp_clipping_norm,
                        num_sampled_clients=cfg.min_nodes)
        privacy.update({
            "wrapper": wrapper.__name__, "noise_multiplier": cfg.dp_noise_multiplier,
            "clipping_norm": cfg.dp_clipping_norm, "num_sampled_clients": cfg.min_nodes,
            "noise_stddev": cfg.dp_noise_multiplier * cfg.dp_clipping_norm / cfg.min_nodes,
            "note": "central DP on model updates (Gaussian noise on the aggregate); metrics are not privatised",
        })
    described["differential_privacy"] = privacy
    return SiteAwareStrategy(inner, p.NUM_EXAMPLES), described
