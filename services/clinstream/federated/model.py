"""The model: class-weighted, L2-regularised logistic regression in numpy, trained by full-batch gradient descent.

Its parameters are two arrays, `coef` (one weight per feature) and `intercept`, which is all a site ever sends.
Class weighting is "balanced" per site: each class contributes half of the loss, so a site with few raised-CRP
samples still learns from them. FedProx adds mu/2 * ||w - w_global||^2 to the local loss.

Standardisation: features are centred and scaled with a mean and scale vector, then NaN (missing) becomes 0, i.e.
the mean. `Standardiser.fit` computes them from local training data (per-site mode); `from_sums` from the sums
that sites report (federated mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
