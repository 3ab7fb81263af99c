"""dot, TRAK and TracIn scorers: closed forms computed independently, checkpoints, shapes, validation."""

from __future__ import annotations

import numpy as np
import pytest
from mwga_plugins.scorers.dot import DotScorer, DotScorerConfig
from mwga_plugins.scorers.tracin import TracInScorer, TracInScorerConfig
from mwga_plugins.scorers.trak import TrakScorer, TrakScorerConfig
from omegaconf import OmegaConf

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import ScorerContract


class TestDotContract(ScorerContract):
    component_class = DotScorer


class TestTrakContract(ScorerContract):
    component_class = TrakScorer


class TestTracInContract(ScorerContract):
    component_class = TracInScorer


def features(k: int, n: int, p: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, n, p)).astype(np.float32)


CTX = RunContext(seed=0)


def explicit_trak(query: np.ndarray, train: np.ndarray, damping: float) -> np.ndarray:
    """The textbook formula with an explicit inverse (fine in a test, in float64)."""
    phi = train.astype(np.float64)
    inverse = np.linalg.inv(phi.T @ phi + damping * np.eye(phi.shape[1]))
    return query.astype(np.float64) @ inverse @ phi.T


@pytest.mark.parametrize(("n", "p"), [(40, 8), (6, 20)], ids=["P<N", "P>N"])
def test_trak_equals_closed_form_absolute_damping(n, p):
    query, train = features(2, 3, p, seed=1), features(2, n, p, seed=2)
    scores = TrakScorer(TrakScorerConfig(damping=0.5, relative_damping=False)).score(query, train, CTX)
    expected = (explicit_trak(query[0], train[0], 0.5) + explicit_trak(query[1], train[1], 0.5)) / 2
    assert scores.shape == (3, n) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)


def test_trak_relative_damping_is_a_fraction_of_the_mean_eigenvalue():
    query, train = features(1, 2, 6, seed=3), features(1, 30, 6, seed=4)
    phi = train[0].astype(np.float64)
    lam = 0.1 * np.trace(phi.T @ phi) / 6
    scores = TrakScorer(TrakScorerConfig(damping=0.1)).score(query, train, CTX)
    np.testing.assert_allclose(scores, explicit_trak(query[0], train[0], lam), rtol=1e-9)
    # scale invariance: relative damping makes TRAK scores of c*Phi equal to those of Phi divided by c
    scaled = TrakScorer(TrakScorerConfig(damping=0.1)).score(query, 10 * train, CTX)
    np.testing.assert_allclose(scaled, scores / 10, rtol=1e-5, atol=1e-8)


def test_trak_zero_damping_uses_the_pseudo_inverse():
    query, train = features(1, 2, 5, seed=5), features(1, 20, 5, seed=6)
    scores = TrakScorer(TrakScorerConfig(damping=0.0)).score(query, train, CTX)
    np.testing.assert_allclose(
        scores, query[0].astype(np.float64) @ np.linalg.pinv(train[0].astype(np.float64)), rtol=1e-8
    )
    # with N > P, Phi has full column rank, so Phi^+ Phi = I: the scores reconstruct the query's features
    np.testing.assert_allclose(scores @ train[0].astype(np.float64), query[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("damping", [-0.1, float("nan"), float("inf")])
def test_trak_rejects_bad_damping(damping):
    with pytest.raises(ConfigValueError) as error:
        TrakScorer(TrakScorerConfig(damping=damping))
    assert error.value.field == "damping"


def test_trak_damping_error_names_the_group(host):
    with pytest.raises(ConfigValueError, match=r"scorer\.damping"):
        host.build("scorer", OmegaConf.create({"name": "trak", "damping": -1.0}))


def test_dot_is_the_mean_inner_product_over_checkpoints():
    query, train = features(3, 4, 7, seed=7), features(3, 9, 7, seed=8)
    scores = DotScorer(DotScorerConfig()).score(query, train, CTX)
    expected = sum(query[k].astype(np.float64) @ train[k].astype(np.float64).T for k in range(3)) / 3
    assert scores.shape == (4, 9)
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


def test_tracin_weights_checkpoints_by_learning_rate():
    query, train = features(2, 4, 7, seed=9), features(2, 5, 7, seed=10)
    q, t = query.astype(np.float64), train.astype(np.float64)
    scores = TracInScorer(TracInScorerConfig(learning_rates=[0.5, 2.0])).score(query, train, CTX)
    np.testing.assert_allclose(scores, 0.5 * q[0] @ t[0].T + 2.0 * q[1] @ t[1].T, rtol=1e-10)
    # default: all learning rates 1, a sum (not a mean) over checkpoints
    default = TracInScorer(TracInScorerConfig()).score(query, train, CTX)
    np.testing.assert_allclose(default, q[0] @ t[0].T + q[1] @ t[1].T, rtol=1e-10)


def test_tracin_normalize_gives_summed_cosines():
    query, train = features(2, 3, 6, seed=11), features(2, 4, 6, seed=12)
    train[1, 2] = 0.0  # a zero row scores 0, not NaN
    scores = TracInScorer(TracInScorerConfig(normalize=True)).score(query, train, CTX)
    expected = np.zeros((3, 4))
    for k in range(2):
        for i in range(3):
            for j in range(4):
                a, b = query[k, i].astype(np.float64), train[k, j].astype(np.float64)
                norm = np.linalg.norm(a) * np.linalg.norm(b)
                expected[i, j] += a @ b / norm if norm > 0 else 0.0
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    assert np.abs(scores).max() <= 2 + 1e-9


def test_tracin_learning_rates_must_match_checkpoints():
    scorer = TracInScorer(TracInScorerConfig(learning_rates=[1.0, 1.0, 1.0]))
    with pytest.raises(ConfigValueError, match=r"scorer\.learning_rates.*one rate per checkpoint: 2"):
        scorer.score(features(2, 1, 3, seed=0), features(2, 2, 3, seed=1), CTX)


@pytest.mark.parametrize("rates", [[0.0], [-1.0], [float("nan")]])
def test_tracin_rejects_bad_learning_rates(rates):
    with pytest.raises(ConfigValueError) as error:
        TracInScorer(TracInScorerConfig(learning_rates=rates))
    assert error.value.field == "learning_rates"


def test_tracin_builds_from_a_composed_list(host):
    scorer = host.build("scorer", OmegaConf.create({"name": "tracin", "learning_rates": [1, 3]}))
    query, train = features(2, 2, 4, seed=13), features(2, 3, 4, seed=14)
    q, t = query.astype(np.float64), train.astype(np.float64)
    np.testing.assert_allclose(scorer.score(query, train, CTX), q[0] @ t[0].T + 3 * q[1] @ t[1].T, rtol=1e-10)
