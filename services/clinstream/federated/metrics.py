"""Evaluation metrics: ROC AUC and balanced accuracy per site, and pooled across sites from score histograms.

A site reports, besides its own ROC AUC and balanced accuracy, two histograms of the predicted probabilities of
its held-out examples (one per class, fixed bins over [0, 1]). Summing the histograms of all sites gives the
pooled (global) ROC AUC and balanced accuracy without any per-example score leaving a site; the AUC counts pairs
in the same bin as ties (half), so it is exact up to the bin width.

The per-site metrics are computed with numpy (Mann-Whitney U with average ranks for ties; mean per-class recall)
rather than scikit-learn: every ClientApp message runs in a fresh process, and importing sklearn.metrics costs
about 1.5 s of CPU there. The unit tests check both against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
THRESHOLD = 0.5


def roc_auc(y: npt.NDArray[np.int8], scores: F64) -> float:
    """ROC AUC, or NaN when only one class is present."""
    pos = np.asarray(y) == 1
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each group of tied scores
    rank_sum = float(average_rank[inverse.ravel()][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def balanced_accuracy(y: npt.NDArray[np.int8], scores: F64, threshold: float = THRESHOLD) -> float:
    """Balanced accuracy at the threshold, or NaN without examples."""
    y = np.asarray(y)
    if len(y) == 0:
        return math.nan
    called = np.asarray(scores) >= threshold
    recalls = [float((called[y == label] == bool(label)).mean()) for label in (0, 1) if (y == label).any()]
    return float(np.mean(recalls))


def score_histograms(y: npt.NDArray[np.int8], scores: F64, bins: int) -> tuple[list[int], list[int]]:
    """Counts of negatives and positives per score bin [k/bins, (k+1)/bins) (the last bin includes 1)."""
    idx = np.clip((scores * bins).astype(np.int64), 0, bins - 1)
    neg = np.bincount(idx[y == 0], minlength=bins)
    pos = np.bincount(idx[y == 1], minlength=bins)
    return [int(v) for v in neg], [int(v) for v in pos]


def auc_from_histograms(neg: I64 | list[int], pos: I64 | list[int]) -> float:
    """ROC AUC of binned scores: P(score_pos > score_neg) + 0.5 P(same bin); NaN if a class is missing."""
    n = np.asarray(neg, dtype=np.float64)
    p = np.asarray(pos, dtype=np.float64)
    if n.sum() == 0 or p.sum() == 0:
        return math.nan
    below = np.cumsum(n) - n  # negatives in lower bins
    return float((p * (below + 0.5 * n)).sum() / (n.sum() * p.sum()))


def balanced_accuracy_from_histograms(neg: I64 | list[int], pos: I64 | list[int],
                                      threshold: float = THRESHOLD) -> float:
    """Balanced accuracy with scores >= threshold called positive (threshold on a bin edge)."""
    n = np.asarray(neg, dtype=np.float64)
    p = np.asarray(pos, dtype=np.float64)
    cut = round(threshold * len(n))
    rates = []
    if p.sum() > 0:
        rates.append(p[cut:].sum() / p.sum())
    if n.sum() > 0:
        rates.append(n[:cut].sum() / n.sum())
    return float(np.mean(rates)) if rates else math.nan
