"""The linear datamodeling score (LDS, TRAK / D-TRAK), Spearman correlation and a bootstrap interval.

For S random training subsets (a mask (S, N)) and one query, the attribution predicts the model output
of the model trained on subset s as the sum of the query's scores over the subset's clips. Scores say how
much a clip *helps* the query (removing it raises the loss), so the prediction is compared with the
*negated* output: LDS = Spearman(mask @ scores, -output) over the subsets. An attribution equal to the
true leave-one-out effects of a linear model gets 1, its negation -1, random scores about 0.
"""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the mean of their ranks. Shape: (n,) -> (n,) float64."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two (n,) arrays (Pearson of their average ranks); 0 when either
    is constant (no ranking to agree with)."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return 0.0 if norm == 0 else float((rx * ry).sum() / norm)


def lds_per_query(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """LDS of each query (see the module docstring).

    Shape:
        scores: (Q, N) attribution scores, higher = the clip helps the query more.
        masks: (S, N) bool, clip n is in subset s.
        outputs: (S, Q) the output (a loss: lower is better) of subset s's model on query q.
        returns: (Q,) float64 in [-1, 1].
    """
    predicted = masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64).T  # (S, Q)
    return np.array([spearman(predicted[:, q], -outputs[:, q]) for q in range(outputs.shape[1])])


def bootstrap_interval(
    values: np.ndarray, draws: int, level: float, rng: np.random.Generator
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (Q,), resampling queries.

    ``draws`` resamples of size Q with replacement; returns the (1 - level) / 2 and (1 + level) / 2
    quantiles of their means. With draws = 0 or one value, (mean, mean).
    """
    values = np.asarray(values, dtype=np.float64)
    if draws == 0 or len(values) < 2:
        mean = float(values.mean())
        return mean, mean
    picks = rng.integers(0, len(values), size=(draws, len(values)))
    means = values[picks].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def lds_summary(per_query: np.ndarray, draws: int, level: float, rng: np.random.Generator) -> dict:
    """``{mean, low, high, per_query}`` of per-query LDS values (Q,), the interval by
    :func:`bootstrap_interval`."""
    low, high = bootstrap_interval(per_query, draws, level, rng)
    return {
        "mean": float(np.mean(per_query)),
        "low": low,
        "high": high,
        "per_query": [float(v) for v in per_query],
    }
