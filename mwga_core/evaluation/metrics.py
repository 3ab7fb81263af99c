"""Retrieval metrics of an attribution ranking against ground truth (binary relevance).

For a query of pattern m, the relevant training clips are those of pattern m. With ranks counted from 1:

* P@k: relevant clips among the top k, divided by k.
* R@k: relevant clips among the top k, divided by the number of relevant clips.
* MRR: 1 / rank of the first relevant clip (0 if there is none).
* NDCG@k: DCG = sum over the top k of rel_i / log2(i + 1), divided by the DCG of an ideal ranking.
* score gap: mean score of relevant clips minus mean score of the others.
* mean GT rank: the mean rank of all relevant clips.

Per-pattern values average the queries of that pattern; the mean row averages the patterns (macro), as
the paper's tables do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core.api.errors import ConfigValueError, DataError


@dataclass
class MetricSpec:
    """Which cut-offs to report; part of the run config as ``eval``."""

    precision_at: list[int] = field(default_factory=lambda: [5, 10, 20])
    recall_at: list[int] = field(default_factory=lambda: [20])
    ndcg_at: list[int] = field(default_factory=lambda: [20])

    def names(self) -> list[str]:
        """Metric names in table order."""
        return (
            [f"P@{k}" for k in self.precision_at]
            + [f"R@{k}" for k in self.recall_at]
            + ["MRR"]
            + [f"NDCG@{k}" for k in self.ndcg_at]
            + ["score_gap", "mean_gt_rank"]
        )

    def validate(self, corpus_size: int) -> None:
        """Every cut-off must be in [1, N]."""
        for name in ("precision_at", "recall_at", "ndcg_at"):
            for k in getattr(self, name):
                if not 1 <= k <= corpus_size:
                    raise ConfigValueError(
                        f"eval.{name}",
                        list(getattr(self, name)),
                        f"cut-offs k with 1 <= k <= {corpus_size} (the number of training clips)",
                    )


def rank_clips(scores: np.ndarray) -> np.ndarray:
    """Training clips ordered by descending score; ties keep the lower index first.

    Shape:
        scores: (Q, N) float.
        returns: (Q, N) int64, ``ranking[q, r]`` = index of the clip at rank r + 1.
    """
    return np.argsort(-scores, axis=1, kind="stable")


def query_metrics(
    ranking: np.ndarray, relevant: np.ndarray, scores: np.ndarray, spec: MetricSpec
) -> dict[str, float]:
    """Metrics of one query.

    Shape:
        ranking: (N,) clip indices, best first.
        relevant: (N,) bool, by clip index.
        scores: (N,) float, by clip index.
    """
    hits = relevant[ranking].astype(np.float64)  # hits[r] = 1 if rank r + 1 is relevant
    total = hits.sum()
    result: dict[str, float] = {}
    for k in spec.precision_at:
        result[f"P@{k}"] = hits[:k].sum() / k
    for k in spec.recall_at:
        result[f"R@{k}"] = hits[:k].sum() / total if total else 0.0
    first = np.flatnonzero(hits)
    result["MRR"] = 1.0 / (first[0] + 1) if first.size else 0.0
    discounts = 1.0 / np.log2(np.arange(2, len(hits) + 2))
    for k in spec.ndcg_at:
        ideal = discounts[: int(min(k, total))].sum()
        result[f"NDCG@{k}"] = (hits[:k] * discounts[:k]).sum() / ideal if ideal else 0.0
    others = ~relevant
    gap = scores[relevant].mean() - scores[others].mean() if relevant.any() and others.any() else 0.0
    result["score_gap"] = float(gap)
    result["mean_gt_rank"] = float((first + 1).mean()) if first.size else float("nan")
    return {name: float(value) for name, value in result.items()}


@dataclass
class Evaluation:
    """Per-query metrics and their per-pattern and mean aggregates."""

    per_query: list[dict[str, float]]
    per_pattern: dict[str, dict[str, float]]
    mean: dict[str, float]


def evaluate(
    scores: np.ndarray,
    query_labels: np.ndarray,
    train_labels: np.ndarray,
    class_names: list[str],
    spec: MetricSpec,
) -> tuple[np.ndarray, Evaluation]:
    """Rank every query's training clips and compute the metrics.

    Shape:
        scores: (Q, N); query_labels: (Q,); train_labels: (N,).
    Returns:
        rankings (Q, N) and the :class:`Evaluation`. A query with an unknown label (-1, e.g. an unlabelled
        video folder) is ranked but not evaluated: its ``per_query`` entry is ``{}``; with no labelled
        query at all, every mean is NaN.
    Raises:
        DataError: a labelled query whose pattern has no training clip (every metric would be a
            meaningless 0, e.g. a labels file that names no training clip).
    """
    _refuse_queries_without_relevant_clips(query_labels, train_labels, class_names)
    rankings = rank_clips(scores)
    per_query = [
        query_metrics(rankings[q], train_labels == query_labels[q], scores[q], spec)
        if query_labels[q] >= 0
        else {}
        for q in range(len(scores))
    ]
    names = spec.names()
    per_pattern: dict[str, dict[str, float]] = {}
    for label, pattern in enumerate(class_names):
        rows = [m for m, lab in zip(per_query, query_labels, strict=True) if lab == label]
        if rows:
            per_pattern[pattern] = {name: float(np.mean([r[name] for r in rows])) for name in names}
    mean = {
        name: float(np.mean([row[name] for row in per_pattern.values()])) if per_pattern else float("nan")
        for name in names
    }
    return rankings, Evaluation(per_query=per_query, per_pattern=per_pattern, mean=mean)


def _refuse_queries_without_relevant_clips(
    query_labels: np.ndarray, train_labels: np.ndarray, class_names: list[str]
) -> None:
    present = set(np.asarray(train_labels)[np.asarray(train_labels) >= 0].tolist())
    orphans = sorted({int(label) for label in query_labels if label >= 0 and int(label) not in present})
    if orphans:
        names = [class_names[label] if label < len(class_names) else str(label) for label in orphans]
        labelled = len(present)
        raise DataError(
            f"no training clip has the pattern of the queries labelled {', '.join(names)} "
            f"({labelled} training pattern(s) labelled in all): their metrics would be all zeros. "
            "Check that the labels file names the training clips (dataset.labels), or drop those queries."
        )
