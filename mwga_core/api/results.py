"""What a run of the attribution pipeline returns: scores, rankings, metrics and the features behind them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core.api.clips import Corpus
from mwga_core.evaluation.metrics import Evaluation


@dataclass
class AttributionResult:
    """Everything a run computed.

    Attributes:
        scores: (Q, N) float64 influence of each training clip on each query.
        rankings: (Q, N) int64 training-clip indices, most influential first.
        train_features, query_features: (K, N, P) and (K, Q, P) float32.
    """

    corpus: Corpus
    scores: np.ndarray
    rankings: np.ndarray
    evaluation: Evaluation
    train_features: np.ndarray
    query_features: np.ndarray
    static_training_ids: list[str]
