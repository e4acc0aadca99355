"""The federated task, in Flower's `task.py` shape: the model, a site's data, local training and evaluation.

Model: class-weighted, L2-regularised logistic regression in numpy, trained by full-batch gradient descent. Its
parameters are two arrays, `coef` (one weight per feature) and `intercept`, which is all a site ever sends. Class
weighting is "balanced" per site: each class contributes half of the loss, so a site with few raised-CRP samples
still learns from them. FedProx adds mu/2 * ||w - w_global||^2 to the local loss.

Standardisation: features are centred and scaled with a mean and scale vector, then NaN (missing) becomes 0, i.e.
the mean. `Standardiser.fit` computes them from local training data (per-site mode); `from_sums` from the sums
that sites report (federated mode).

Data: `load_data` reads a site's examples as its read-only role (`roles.py`, SQL in `dataset.py`) and refuses
(`Declined`) a role broader than the feature views or a cohort under the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import psycopg

from clinstream.core.config import get_settings
from clinstream.federated import metrics as m
from clinstream.federated.config import SiteNodeConfig, TaskConfig
from clinstream.federated.dataset import SiteDataset, load_site_dataset
from clinstream.federated.roles import connect_reader, privilege_violations, reader_url

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
_EPS = 1e-12


@dataclass(frozen=True)
class Standardiser:
    """Centre and scale per feature; missing values become the mean (0 after scaling)."""

    mean: F64
    scale: F64

    @classmethod
    def fit(cls, x: F64) -> Standardiser:
        """From the rows of x, ignoring NaN; constant or empty columns get scale 1."""
        return cls.from_sums(*column_sums(x))

    @classmethod
    def from_sums(cls, count: F64, total: F64, total_sq: F64) -> Standardiser:
        """From per-column counts, sums and sums of squares of the non-missing values (possibly of many sites)."""
        n = np.maximum(count, 1.0)
        mean = np.where(count > 0, total / n, 0.0)
        var = np.where(count > 1, (total_sq - n * mean**2) / np.maximum(count - 1, 1.0), 0.0)
        scale = np.sqrt(np.maximum(var, 0.0))
        return cls(mean.astype(np.float64), np.where(scale > 1e-9, scale, 1.0).astype(np.float64))

    def transform(self, x: F64) -> F64:
        """Standardised copy of x with NaN replaced by 0."""
        z = (x - self.mean) / self.scale
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def column_sums(x: F64) -> tuple[F64, F64, F64]:
    """Per-column count, sum and sum of squares of the non-missing values."""
    finite = np.isfinite(x)
    v = np.where(finite, x, 0.0)
    return finite.sum(axis=0).astype(np.float64), v.sum(axis=0), (v**2).sum(axis=0)


@dataclass
class LogisticModel:
    """Weights of a logistic regression."""

    coef: F64
    intercept: float = 0.0

    @classmethod
    def zeros(cls, n_features: int) -> LogisticModel:
        """The all-zero model (predicts 0.5 everywhere)."""
        return cls(np.zeros(n_features, dtype=np.float64), 0.0)

    def predict_proba(self, z: F64) -> F64:
        """P(raised CRP) for standardised rows z."""
        return _sigmoid(z @ self.coef + self.intercept)


@dataclass(frozen=True)
class TrainParams:
    """Optimiser settings of one local training."""

    epochs: int
    learning_rate: float
    l2: float
    proximal_mu: float = 0.0


def _sigmoid(t: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -35.0, 35.0)))


def balanced_weights(y: I8) -> F64:
    """Per-example weights so that each present class carries half of the total weight."""
    n = len(y)
    pos = int(y.sum())
    neg = n - pos
    w_pos = n / (2.0 * pos) if pos else 0.0
    w_neg = n / (2.0 * neg) if neg else 0.0
    if not pos or not neg:  # one class only: plain weights
        w_pos = w_neg = 1.0
    return np.where(y == 1, w_pos, w_neg).astype(np.float64)


def loss(model: LogisticModel, z: F64, y: I8, l2: float) -> float:
    """Class-weighted mean log loss plus the L2 penalty."""
    if len(y) == 0:
        return 0.0
    p = np.clip(model.predict_proba(z), _EPS, 1 - _EPS)
    sw = balanced_weights(y)
    ll = -(sw * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / sw.sum()
    return float(ll + 0.5 * l2 * float(model.coef @ model.coef))


def train(model: LogisticModel, z: F64, y: I8, params: TrainParams,
          anchor: LogisticModel | None = None) -> LogisticModel:
    """Gradient descent from `model`; `anchor` is the global model of the FedProx proximal term."""
    coef, b = model.coef.astype(np.float64).copy(), float(model.intercept)
    if len(y) == 0:
        return LogisticModel(coef, b)
    sw = balanced_weights(y)
    sw = sw / sw.sum()
    for _ in range(params.epochs):
        residual = sw * (_sigmoid(z @ coef + b) - y)
        grad_w = z.T @ residual + params.l2 * coef
        grad_b = float(residual.sum())
        if anchor is not None and params.proximal_mu > 0:
            grad_w = grad_w + params.proximal_mu * (coef - anchor.coef)
            grad_b += params.proximal_mu * (b - anchor.intercept)
        coef -= params.learning_rate * grad_w
        b -= params.learning_rate * grad_b
    return LogisticModel(coef, b)


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on one side of a site's data: loss, ROC AUC, balanced accuracy and score histograms."""

    loss: float
    roc_auc: float
    balanced_accuracy: float
    hist_neg: list[int]
    hist_pos: list[int]


def evaluate(model: LogisticModel, z: F64, y: I8, score_bins: int) -> Evaluation:
    """The unpenalised loss, ROC AUC, balanced accuracy and (with score_bins > 0) the per-class score histograms."""
    scores = model.predict_proba(z)
    neg, pos = m.score_histograms(y, scores, score_bins) if score_bins else ([], [])
    return Evaluation(loss(model, z, y, 0.0), m.roc_auc(y, scores), m.balanced_accuracy(y, scores), neg, pos)


class Declined(Exception):
    """The site does not take part in this round; the reason is sent to the server (no identifiers in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_data(site: SiteNodeConfig, cfg: TaskConfig, test: bool) -> SiteDataset:
    """The site's examples, read as its reader role; declines unless the training (or held-out) side is big enough.

    The minimum cohort is the larger of the run's and the site's own setting.
    """
    url = site.database_url or reader_url(get_settings().database_url, site.site_id)
    try:
        with connect_reader(site.site_id, url) as conn:
            violations = privilege_violations(conn, site.site_id)
            if violations:
                raise Declined("database role is broader than the feature views: " + "; ".join(violations))
            data = load_site_dataset(conn, cfg)
    except psycopg.Error as exc:  # the class name only: server messages may quote values
        raise Declined(f"feature store not readable ({type(exc).__name__})") from None
    needed = max(cfg.min_participants, site.min_participants)
    have = data.participant_count(test)
    if have < needed:
        side = "held-out" if test else "training"
        raise Declined(f"only {have} {side} participants with examples; the minimum cohort is {needed}")
    return data
