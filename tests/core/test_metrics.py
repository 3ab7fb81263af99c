"""Retrieval metrics against trec_eval (through pytrec_eval) on real rankings, plus hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytrec_eval

from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.evaluation.metrics import MetricSpec, evaluate, query_metrics, rank_clips
from mwga_core.pipeline.run import run_attribution

#: cut-offs beyond the defaults, up to k = N, so every branch (k < relevant, k > relevant, k = N) is hit
CUTOFFS = MetricSpec(precision_at=[1, 5, 10, 20, 60], recall_at=[5, 20, 60], ndcg_at=[1, 5, 10, 20, 60])

#: mwga metric name -> trec_eval measure name
TREC_NAMES = (
    {f"P@{k}": f"P_{k}" for k in CUTOFFS.precision_at}
    | {f"R@{k}": f"recall_{k}" for k in CUTOFFS.recall_at}
    | {f"NDCG@{k}": f"ndcg_cut_{k}" for k in CUTOFFS.ndcg_at}
    | {"MRR": "recip_rank"}
)
TREC_MEASURES = {
    "P." + ",".join(map(str, CUTOFFS.precision_at)),
    "recall." + ",".join(map(str, CUTOFFS.recall_at)),
    "ndcg_cut." + ",".join(map(str, CUTOFFS.ndcg_at)),
    "recip_rank",
}


def trec_eval(scores: np.ndarray, query_labels: np.ndarray, train_labels: np.ndarray) -> dict[str, dict]:
    """trec_eval's per-query measures; query ``q{i}``, document ``d{j}``, binary relevance by label."""
    # trec_eval breaks score ties by document id, mwga by index: only tie-free scores are comparable.
    for row in scores:
        assert len(np.unique(row)) == len(row), "scores with ties cannot be compared to trec_eval"
    qrels = {
        f"q{q}": {f"d{j}": int(train_labels[j] == query_labels[q]) for j in range(len(train_labels))}
        for q in range(len(query_labels))
    }
    run = {
        f"q{q}": {f"d{j}": float(scores[q, j]) for j in range(len(train_labels))}
        for q in range(len(query_labels))
    }
    return pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)


def assert_matches_trec_eval(
    scores: np.ndarray, query_labels: np.ndarray, train_labels: np.ndarray, class_names: list[str]
) -> None:
    _, evaluation = evaluate(scores, query_labels, train_labels, class_names, CUTOFFS)
    reference = trec_eval(scores, query_labels, train_labels)
    for q, ours in enumerate(evaluation.per_query):
        for name, trec_name in TREC_NAMES.items():
            assert ours[name] == pytest.approx(reference[f"q{q}"][trec_name], abs=1e-12), (q, name)
    # per-pattern rows average that pattern's queries; the mean row averages the patterns
    for label, pattern in enumerate(class_names):
        queries = np.flatnonzero(query_labels == label)
        for name, trec_name in TREC_NAMES.items():
            expected = np.mean([reference[f"q{q}"][trec_name] for q in queries])
            assert evaluation.per_pattern[pattern][name] == pytest.approx(expected, abs=1e-12)
    for name in TREC_NAMES:
        expected = np.mean([evaluation.per_pattern[p][name] for p in class_names])
        assert evaluation.mean[name] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("method", ["ours_simulated", "random"])
def test_pipeline_rankings_match_trec_eval(method: str, compose_config, ctx) -> None:
    cfg = compose_config(f"method={method}", "dataset.num_clips=60", "dataset.queries_per_pattern=3")
    result = run_attribution(cfg, ctx)
    corpus = result.corpus
    assert result.scores.shape == (18, 60)
    assert_matches_trec_eval(result.scores, corpus.queries.labels, corpus.train.labels, corpus.class_names)
    # the pipeline's own evaluation uses the configured (default) cut-offs on the same rankings
    assert result.evaluation.per_query[0]["P@5"] == pytest.approx(
        trec_eval(result.scores[:1], corpus.queries.labels[:1], corpus.train.labels)["q0"]["P_5"]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_score_matrices_match_trec_eval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    class_names = ["a", "b", "c", "d"]
    train_labels = rng.integers(0, 4, size=60)
    train_labels[:4] = [0, 1, 2, 3]  # every class has relevant clips
    query_labels = np.array([0, 0, 1, 2, 2, 2, 3])
    scores = rng.standard_normal((len(query_labels), 60))
    assert_matches_trec_eval(scores, query_labels, train_labels, class_names)


def test_hand_computed_query() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.3])
    relevant = np.array([True, False, False, True])
    spec = MetricSpec(precision_at=[1, 2], recall_at=[2], ndcg_at=[2])
    ranking = rank_clips(scores[None])[0]
    assert ranking.tolist() == [0, 2, 3, 1]
    metrics = query_metrics(ranking, relevant, scores, spec)
    assert metrics == pytest.approx(
        {
            "P@1": 1.0,
            "P@2": 0.5,
            "R@2": 0.5,
            "MRR": 1.0,
            "NDCG@2": 1.0 / (1.0 + 1.0 / math.log2(3)),
            "score_gap": (0.9 + 0.3) / 2 - (0.1 + 0.5) / 2,  # 0.3
            "mean_gt_rank": (1 + 3) / 2,  # relevant clips sit at ranks 1 and 3
        }
    )


def test_score_gap_and_mean_gt_rank_when_relevant_clips_rank_last() -> None:
    scores = np.array([0.4, 0.8, 0.2, 0.6, 0.0])
    relevant = np.array([False, False, True, False, True])
    metrics = query_metrics(rank_clips(scores[None])[0], relevant, scores, MetricSpec([1], [1], [1]))
    assert metrics["mean_gt_rank"] == pytest.approx(4.5)  # ranks 4 and 5
    assert metrics["score_gap"] == pytest.approx(0.1 - 0.6)  # negative: the wrong clips score higher
    assert metrics["MRR"] == pytest.approx(0.25)


def test_query_without_relevant_clips() -> None:
    scores = np.array([0.3, 0.2, 0.1])
    metrics = query_metrics(np.arange(3), np.zeros(3, dtype=bool), scores, MetricSpec([1], [1], [1]))
    assert (metrics["P@1"], metrics["R@1"], metrics["MRR"], metrics["NDCG@1"]) == (0.0, 0.0, 0.0, 0.0)
    assert metrics["score_gap"] == 0.0 and math.isnan(metrics["mean_gt_rank"])


def test_evaluate_refuses_a_labelled_query_whose_pattern_has_no_training_clip() -> None:
    """A labels file that names no training clip used to print a table of zeros (issue 14, item 3)."""
    scores = np.array([[0.3, 0.2, 0.1]])
    with pytest.raises(DataError, match="pattern of the queries labelled b"):
        evaluate(scores, np.array([1]), np.array([0, 0, -1]), ["a", "b"], MetricSpec([1], [1], [1]))


def test_evaluate_ranks_unlabelled_queries_against_unlabelled_clips() -> None:
    rankings, evaluation = evaluate(
        np.array([[0.1, 0.3]]), np.array([-1]), np.array([-1, -1]), [], MetricSpec([1], [1], [1])
    )
    assert rankings.tolist() == [[1, 0]] and evaluation.per_query == [{}]


def test_query_where_every_clip_is_relevant() -> None:
    scores = np.array([0.3, 0.2, 0.1])
    metrics = query_metrics(np.arange(3), np.ones(3, dtype=bool), scores, MetricSpec([3], [3], [3]))
    assert metrics["score_gap"] == 0.0  # no other clips to compare with
    assert (metrics["P@3"], metrics["R@3"], metrics["NDCG@3"], metrics["mean_gt_rank"]) == (1, 1, 1, 2)


def test_ties_keep_the_lower_index_first() -> None:
    assert rank_clips(np.array([[0.5, 0.7, 0.5, 0.7]])).tolist() == [[1, 3, 0, 2]]


def test_mean_row_is_the_macro_average_over_patterns() -> None:
    train_labels = np.array([0, 0, 1, 1])
    # pattern a: two queries, perfect and worst; pattern b: one perfect query
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0]])
    _, evaluation = evaluate(scores, np.array([0, 0, 1]), train_labels, ["a", "b"], MetricSpec([1], [1], [1]))
    assert evaluation.per_pattern["a"]["P@1"] == 0.5
    assert evaluation.per_pattern["b"]["P@1"] == 1.0
    assert evaluation.mean["P@1"] == 0.75  # not 2/3, the per-query mean
    assert list(evaluation.per_pattern) == ["a", "b"]


def test_pattern_without_queries_is_left_out() -> None:
    scores = np.array([[2.0, 1.0]])
    _, evaluation = evaluate(scores, np.array([1]), np.array([0, 1]), ["a", "b"], MetricSpec([1], [1], [1]))
    assert list(evaluation.per_pattern) == ["b"]
    assert evaluation.mean["MRR"] == 0.5


def test_metric_names_follow_the_configured_cutoffs() -> None:
    spec = MetricSpec(precision_at=[3, 7], recall_at=[9], ndcg_at=[4, 8])
    assert spec.names() == [
        "P@3",
        "P@7",
        "R@9",
        "MRR",
        "NDCG@4",
        "NDCG@8",
        "score_gap",
        "mean_gt_rank",
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (MetricSpec(precision_at=[5, 61]), "eval.precision_at"),
        (MetricSpec(precision_at=[0]), "eval.precision_at"),
        (MetricSpec(recall_at=[100]), "eval.recall_at"),
        (MetricSpec(ndcg_at=[-1]), "eval.ndcg_at"),
    ],
)
def test_validate_refuses_cutoffs_outside_one_to_n(spec: MetricSpec, field: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        spec.validate(corpus_size=60)
    assert raised.value.field == field
    assert "1 <= k <= 60" in str(raised.value)


def test_validate_accepts_k_equal_to_n() -> None:
    MetricSpec(precision_at=[1, 60], recall_at=[60], ndcg_at=[60]).validate(corpus_size=60)
