"""The counterfactual protocols' pieces: ranks, Spearman, bootstrap, LDS, subsets, removals, still copies."""

from __future__ import annotations

import numpy as np
import pytest

from mwga_core.api.context import RunContext
from mwga_core.cli.counterfactual import retrain_query_indices
from mwga_core.counterfactual.direction import clip_senses, flow_summaries
from mwga_core.counterfactual.lds import (
    average_ranks,
    bootstrap_interval,
    lds_per_query,
    lds_summary,
    spearman,
)
from mwga_core.counterfactual.retrain import LABEL_ORACLE, RANDOM_REMOVAL, removal_sets
from mwga_core.counterfactual.subsets import draw_subsets, keep_without, random_removal, subset_masks, top_k
from mwga_core.diffusion.still_copies import still_frames


def reference_ranks(values: list[float]) -> list[float]:
    """Rank = 1 + (values below) + (ties - 1) / 2, by counting."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def reference_spearman(x: list[float], y: list[float]) -> float:
    """Pearson's formula, written out, on the reference ranks."""
    rx, ry = reference_ranks(x), reference_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def test_average_ranks_match_counting_with_ties() -> None:
    values = [3.0, 1.0, 3.0, 2.0, 5.0, 1.0, 3.0]
    assert average_ranks(np.array(values)).tolist() == reference_ranks(values)


def test_spearman_matches_references() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    # without ties: the textbook 1 - 6 sum d^2 / (n (n^2 - 1))
    d = average_ranks(x) - average_ranks(y)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum() / (30 * (30**2 - 1)))
    # with ties: Pearson of average ranks
    xt, yt = np.round(x), np.round(y * 2)
    assert spearman(xt, yt) == pytest.approx(reference_spearman(xt.tolist(), yt.tolist()))
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(30)) == 0.0


def test_bootstrap_interval_matches_a_loop() -> None:
    values = np.random.default_rng(1).normal(0.3, 0.2, size=25)
    low, high = bootstrap_interval(values, 2000, 0.9, np.random.default_rng(5))
    loop_rng = np.random.default_rng(5)
    picks = loop_rng.integers(0, 25, size=(2000, 25))
    means = sorted(float(np.mean([values[i] for i in row])) for row in picks)
    assert low == pytest.approx(np.quantile(means, 0.05)) and high == pytest.approx(np.quantile(means, 0.95))
    assert low < values.mean() < high
    # the interval is about the normal one: mean +- 1.645 sd / sqrt(n)
    half = 1.645 * values.std() / np.sqrt(25)
    assert high - low == pytest.approx(2 * half, rel=0.2)
    assert bootstrap_interval(np.full(5, 0.4), 100, 0.9, np.random.default_rng(0)) == pytest.approx(
        (0.4, 0.4)
    )
    summary = lds_summary(values, 0, 0.9, np.random.default_rng(0))
    assert (
        summary["low"] == summary["high"] == pytest.approx(values.mean()) and len(summary["per_query"]) == 25
    )


def linear_world(queries: int, clips: int = 40, subsets: int = 30, seed: int = 0):
    """Subset outputs of a linear datamodel: loss = base - sum of the present clips' true effects."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(size=(queries, clips))  # (Q, N): how much clip n lowers query q's loss
    masks = subset_masks(draw_subsets(clips, subsets, 0.5, rng), clips)  # (S, N)
    outputs = rng.normal(size=queries)[None] - masks @ effects.T  # (S, Q)
    return effects, masks, outputs


def test_lds_is_one_for_the_true_effects_minus_one_reversed_and_zero_for_random() -> None:
    effects, masks, outputs = linear_world(queries=8)
    assert lds_per_query(effects, masks, outputs) == pytest.approx(np.ones(8))
    assert lds_per_query(-effects, masks, outputs) == pytest.approx(-np.ones(8))
    effects, masks, outputs = linear_world(queries=300, seed=1)
    random_scores = np.random.default_rng(2).normal(size=effects.shape)
    assert abs(lds_per_query(random_scores, masks, outputs).mean()) < 0.05
    # a noisy estimate of the effects lands in between
    noisy = lds_per_query(effects + np.random.default_rng(3).normal(size=effects.shape), masks, outputs)
    assert 0.3 < noisy.mean() < 0.95


def test_no_subsets_is_an_empty_draw() -> None:
    subsets = draw_subsets(20, 0, 0.5, np.random.default_rng(0))
    assert subsets.shape == (0, 10) and subsets.dtype == np.int64
    assert subset_masks(subsets, 20).shape == (0, 20)


def test_subsets_are_seeded_sorted_and_of_the_fraction() -> None:
    a = draw_subsets(20, 6, 0.5, np.random.default_rng(4))
    b = draw_subsets(20, 6, 0.5, np.random.default_rng(4))
    assert a.shape == (6, 10) and (a == b).all()
    assert all(len(set(row)) == 10 and (np.diff(row) > 0).all() for row in a)
    masks = subset_masks(a, 20)
    assert masks.sum(axis=1).tolist() == [10] * 6 and masks[0, a[0]].all()


def test_top_k_ties_by_index_and_removals() -> None:
    assert top_k(np.array([0.5, 0.9, 0.5, 0.9, 0.1]), 3).tolist() == [0, 1, 3]
    labels = np.array([0, 1, 2] * 10)
    picked = random_removal(30, 4, np.random.default_rng(0), among=np.flatnonzero(labels == 2))
    assert len(picked) == 4 and (labels[picked] == 2).all()
    assert keep_without(6, np.array([1, 4])).tolist() == [0, 2, 3, 5]
    scores = {"m": np.tile(np.arange(30.0), (2, 1))}
    sets = removal_sets(scores, 1, 1, labels, 5, RunContext(seed=3))
    assert sets["m"].tolist() == [25, 26, 27, 28, 29]
    assert (labels[sets[LABEL_ORACLE]] == 1).all() and len(sets[RANDOM_REMOVAL]) == 5
    again = removal_sets(scores, 1, 1, labels, 5, RunContext(seed=3))
    assert all((sets[name] == again[name]).all() for name in sets)


def test_still_frames_repeat_the_middle_frame() -> None:
    frames = np.random.default_rng(0).random((2, 5, 4, 4, 1)).astype(np.float32)
    still = still_frames(frames)
    assert still.shape == frames.shape and (still == frames[:, 2:3]).all()


def affine_flow(a: np.ndarray, shift: tuple[float, float], size: int = 9, steps: int = 2) -> np.ndarray:
    """Flow (1, steps, size, size, 2) of u = a00 x + a01 y + du, v = a10 x + a11 y + dv about the centre."""
    y, x = np.meshgrid(np.arange(size) - (size - 1) / 2, np.arange(size) - (size - 1) / 2, indexing="ij")
    u = a[0, 0] * x + a[0, 1] * y + shift[0]
    v = a[1, 0] * x + a[1, 1] * y + shift[1]
    return np.broadcast_to(np.stack([u, v], axis=-1), (1, steps, size, size, 2)).copy()


def test_clip_senses_read_each_motions_direction_from_its_flow() -> None:
    pan = [affine_flow(np.zeros((2, 2)), (s, 0.0)) for s in (1.5, -0.7, 2.0)]
    spin = [affine_flow(np.array([[0.0, -w], [w, 0.0]]), (0.0, 0.0)) for w in (0.05, -0.08)]
    zoom = [affine_flow(np.eye(2) * r, (0.0, 0.0)) for r in (-0.04, 0.06)]
    flow = np.concatenate(pan + spin + zoom)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    senses, dominant = clip_senses(flow, labels)
    assert dominant == {0: "horizontal", 1: "curl", 2: "divergence"}
    assert senses.tolist() == [1, -1, 1, 1, -1, -1, 1]
    summaries = flow_summaries(flow)
    np.testing.assert_allclose(summaries[0], [1.5, 0.0, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        flow_summaries(flow[..., 0])


def test_retrained_queries_are_spread_over_the_classes() -> None:
    # 30 queries grouped 5 per class: 6 retrained queries are one of each class, not five of the first
    picked = retrain_query_indices(30, 6)
    assert picked == [0, 6, 12, 17, 23, 29] and sorted({i // 5 for i in picked}) == list(range(6))
    assert retrain_query_indices(30, 0) == list(range(30)) == retrain_query_indices(30, 40)
    assert retrain_query_indices(30, 1) == [0]
