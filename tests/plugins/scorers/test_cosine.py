"""cosine scorer: plain cosine unchanged, database-side augmentation (``neighbours``) against hand and
brute-force computations, block independence, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mwga_plugins.scorers import cosine
from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig
from omegaconf import OmegaConf

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import ScorerContract

CTX = RunContext(seed=0)


class TestCosineContract(ScorerContract):
    component_class = CosineScorer


class TestCosineNeighboursContract(ScorerContract):
    component_class = CosineScorer
    config = CosineScorerConfig(name="cosine", neighbours=3)


def features(k: int, n: int, p: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, n, p)).astype(np.float32)


def brute_force_augmented_cosine(query: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """One checkpoint, written as loops: each training clip plus its k most similar others."""
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731 (test-local helper)
    t = [unit(row.astype(np.float64)) for row in train]
    augmented = []
    for i, row in enumerate(t):
        others = sorted((j for j in range(len(t)) if j != i), key=lambda j: (-float(row @ t[j]), j))
        augmented.append(unit(row + sum(t[j] for j in others[:k])))
    return np.array([[float(unit(q.astype(np.float64)) @ a) for a in augmented] for q in query])


def test_neighbours_zero_is_the_plain_cosine():
    query, train = features(2, 3, 5, seed=1), features(2, 7, 5, seed=2)
    scores = CosineScorer(CosineScorerConfig()).score(query, train, CTX)
    q, t = query.astype(np.float64), train.astype(np.float64)
    q, t = q / np.linalg.norm(q, axis=-1, keepdims=True), t / np.linalg.norm(t, axis=-1, keepdims=True)
    np.testing.assert_allclose(scores, (q[0] @ t[0].T + q[1] @ t[1].T) / 2, rtol=1e-10, atol=1e-12)


def test_neighbours_matches_a_hand_computation():
    # t2 = (1, 1) is equally close to t0 and t1: the tie goes to the lower index, t0
    train = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], np.float32)
    query = np.array([[[1.0, 0.0]]], np.float32)
    scores = CosineScorer(CosineScorerConfig(neighbours=1)).score(query, train, CTX)
    r = 1 / math.sqrt(2)
    norm = math.hypot(1 + r, r)  # |(1 + r, r)|: t0 + t2, and t2 + t0
    np.testing.assert_allclose(scores, [[(1 + r) / norm, r / norm, (1 + r) / norm]], rtol=1e-12)
    plain = CosineScorer(CosineScorerConfig()).score(query, train, CTX)
    np.testing.assert_allclose(plain, [[1.0, 0.0, r]], rtol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_neighbours_matches_brute_force_and_averages_checkpoints(k):
    query, train = features(2, 4, 6, seed=3), features(2, 12, 6, seed=4)
    scores = CosineScorer(CosineScorerConfig(neighbours=k)).score(query, train, CTX)
    expected = sum(brute_force_augmented_cosine(query[c], train[c], k) for c in range(2)) / 2
    np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-12)


def test_a_noisy_clip_is_rescued_by_its_neighbours():
    # cluster A along e0, cluster B along e1; one A clip's own feature leans toward B
    train = np.array([[[1.0, 0.05, 0.0], [1.0, -0.05, 0.0], [1.0, 0.0, 0.05], [0.8, 1.0, 0.0],
                       [0.0, 1.0, 0.05], [0.05, 1.0, 0.0], [0.0, 1.0, -0.05]]], np.float32)  # fmt: skip
    query = np.array([[[1.0, 0.0, 0.0]]], np.float32)
    plain = CosineScorer(CosineScorerConfig()).score(query, train, CTX)[0]
    augmented = CosineScorer(CosineScorerConfig(neighbours=2)).score(query, train, CTX)[0]
    assert plain[3] < plain[:3].min()  # the noisy clip trails its cluster under the plain cosine
    assert augmented[3] > augmented[4:].max()  # ... and now ranks above every B clip
    assert np.all(augmented[:3] > augmented[4:].max())


def test_neighbours_beyond_the_corpus_make_every_clip_equal():
    query, train = features(1, 3, 4, seed=5), features(1, 6, 4, seed=6)
    scores = CosineScorer(CosineScorerConfig(neighbours=50)).score(query, train, CTX)
    np.testing.assert_allclose(scores, np.repeat(scores[:, :1], 6, axis=1), rtol=1e-10)


def test_result_does_not_depend_on_the_neighbour_block(monkeypatch):
    query, train = features(1, 3, 8, seed=7), features(1, 25, 8, seed=8)
    whole = CosineScorer(CosineScorerConfig(neighbours=3)).score(query, train, CTX)
    monkeypatch.setattr(cosine, "NEIGHBOUR_BLOCK_ENTRIES", 60)  # 2 rows per block
    blocked = CosineScorer(CosineScorerConfig(neighbours=3)).score(query, train, CTX)
    np.testing.assert_array_equal(blocked, whole)


@pytest.mark.parametrize("neighbours", [-1, 1.5, True])
def test_rejects_bad_neighbours(neighbours):
    with pytest.raises(ConfigValueError) as error:
        CosineScorer(CosineScorerConfig(neighbours=neighbours))
    assert error.value.field == "neighbours"


def test_neighbours_error_names_the_group(host):
    with pytest.raises(ConfigValueError, match=r"scorer\.neighbours"):
        host.build("scorer", OmegaConf.create({"name": "cosine", "neighbours": -2}))


# -- the approximate neighbour search (exact_neighbours_below) -----------------------------------------


def clustered(n: int, p: int, clusters: int, seed: int) -> np.ndarray:
    """(n, p) float32 rows around ``clusters`` random centres, as clip features cluster by motion; the
    clusters are tight enough that every row's nearest rows lie in the cells the search probes (checked
    for seeds 0-9: at noise 0.5 about one row in 2000 misses one neighbour)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, p))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, p))).astype(np.float32)


def exact_nearest(train: np.ndarray, k: int) -> np.ndarray:
    """Each row, then its k most similar other rows (float64 cosine, ties to the lower index)."""
    unit = train.astype(np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = np.divide(unit, norms, out=np.zeros_like(unit), where=norms > 0)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, : k + 1]


def test_the_approximate_search_finds_the_exact_neighbours_on_a_clustered_corpus():
    train = clustered(2400, 16, clusters=40, seed=11)
    train[7] = 0.0  # an all-zero row: as similar to every row, it takes the lowest rows, as exactly
    train[9] = train[8]  # identical rows: each still counts itself first
    augmented, nearest = cosine.augment_approximately(train, 5)
    np.testing.assert_array_equal(nearest, exact_nearest(train, 5))
    exact = CosineScorer(CosineScorerConfig(neighbours=5)).augmented_train(train[None])[0]
    np.testing.assert_array_equal(augmented, exact)  # same rows summed in the same order: bit for bit


def test_both_paths_rank_the_same_through_the_scorer():
    train = np.stack([clustered(1500, 12, 30, seed=12), clustered(1500, 12, 30, seed=13)])
    query = features(2, 6, 12, seed=14)
    exact = CosineScorer(CosineScorerConfig(neighbours=5)).score(query, train, CTX)
    approximate_scorer = CosineScorer(CosineScorerConfig(neighbours=5, exact_neighbours_below=1000))
    approximate = approximate_scorer.score(query, train, CTX)
    np.testing.assert_array_equal(
        np.argsort(-approximate, axis=1, kind="stable"), np.argsort(-exact, axis=1, kind="stable")
    )
    np.testing.assert_allclose(approximate, exact, rtol=0, atol=1e-12)


def test_the_threshold_picks_the_path(monkeypatch):
    calls = []
    original = cosine.augment_approximately
    monkeypatch.setattr(cosine, "augment_approximately", lambda *a: calls.append("approx") or original(*a))
    train = clustered(200, 8, 4, seed=15)[None]
    CosineScorer(CosineScorerConfig(neighbours=2, exact_neighbours_below=201)).augmented_train(train)
    assert calls == []  # N = 200 < 201: exact
    CosineScorer(CosineScorerConfig(neighbours=2, exact_neighbours_below=200)).augmented_train(train)
    assert calls == ["approx"]
    # the default keeps every corpus the tests and the benchmark use on the exact path
    assert CosineScorerConfig().exact_neighbours_below == 20000


def test_the_approximate_search_is_deterministic_and_does_not_depend_on_threads():
    import faiss

    train = features(1, 3000, 24, seed=16)[0]  # no cluster structure: many near-equal candidates
    first = cosine.augment_approximately(train, 4)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        single = cosine.augment_approximately(train, 4)
    finally:
        faiss.omp_set_num_threads(threads)
    again = cosine.augment_approximately(train, 4)
    for other in (single, again):
        np.testing.assert_array_equal(other[1], first[1])
        np.testing.assert_array_equal(other[0], first[0])
    assert np.array_equal(first[1][:, 0], np.arange(3000))  # every row counts itself first


def test_a_row_with_too_few_candidates_is_compared_with_every_row(monkeypatch):
    train = clustered(600, 8, 6, seed=17)
    real = cosine.neighbour_candidates

    def starved(unit32, count):  # row 3 gets only itself as a candidate
        found, similarity = real(unit32, count)
        found[3], similarity[3] = -1, -3.4e38  # FAISS's padding
        found[3, 0], similarity[3, 0] = 3, 1.0
        return found, similarity

    monkeypatch.setattr(cosine, "neighbour_candidates", starved)
    _, nearest = cosine.augment_approximately(train, 5)
    np.testing.assert_array_equal(nearest[3], exact_nearest(train, 5)[3])


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_rejects_bad_exact_neighbours_below(value):
    with pytest.raises(ConfigValueError) as error:
        CosineScorer(CosineScorerConfig(neighbours=5, exact_neighbours_below=value))
    assert error.value.field == "exact_neighbours_below"
