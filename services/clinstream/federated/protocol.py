"""The message contract between ServerApp and ClientApp: record keys, model arrays and reply builders.

Every reply of a site carries exactly one ArrayRecord (train replies), one MetricRecord with the same keys whether
the site took part or declined, and a ConfigRecord `status` with the site id, `declined` and a `reason`. A
declined reply has num-examples 0 and (for train) the arrays it was sent, so even a strategy that does not know
about declines would give it zero weight. Nothing else leaves a site: no pseudonym, no example, no per-example
score.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from clinstream.federated.task import LogisticModel

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
STATUS = "status"

NUM_EXAMPLES = "num-examples"
DECLINED = "declined"
PARTICIPANTS = "participants"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
ROC_AUC = "roc-auc"
BALANCED_ACCURACY = "balanced-accuracy"
HIST_NEG = "hist-neg"
HIST_POS = "hist-pos"
STAT_COUNT = "stat-count"
STAT_SUM = "stat-sum"
STAT_SUMSQ = "stat-sumsq"

STATUS_SITE = "site-id"
STATUS_REASON = "reason"

STD_MEAN = "std-mean"
STD_SCALE = "std-scale"

# Train metrics (beside num-examples), evaluate metrics, stats metrics: the keys every reply of a kind has.
TRAIN_KEYS = (NUM_EXAMPLES, DECLINED, PARTICIPANTS, TRAIN_LOSS)
EVAL_KEYS = (NUM_EXAMPLES, DECLINED, PARTICIPANTS, EVAL_LOSS, ROC_AUC, BALANCED_ACCURACY, HIST_NEG, HIST_POS)


def model_to_record(model: LogisticModel) -> ArrayRecord:
    """The model as an ArrayRecord with arrays `coef` and `intercept`."""
    return ArrayRecord({"coef": Array(np.asarray(model.coef, dtype=np.float64)),
                        "intercept": Array(np.asarray([model.intercept], dtype=np.float64))})


def model_from_record(record: ArrayRecord) -> LogisticModel:
    """The model of an ArrayRecord with arrays `coef` and `intercept`."""
    coef = np.asarray(record["coef"].numpy(), dtype=np.float64).copy()
    return LogisticModel(coef, float(np.asarray(record["intercept"].numpy()).ravel()[0]))
