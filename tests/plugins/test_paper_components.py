"""The paper's components one by one: HOOF, Farnebäck settings, simulated gradient, projector, scorers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor, hoof_histograms
from mwga_plugins.gradients.simulated import SimulatedGradient, SimulatedGradientConfig
from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow
from mwga_plugins.projectors.dense_jl import BLOCK_ROWS
from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig
from mwga_plugins.scorers.random import RandomScorer, RandomScorerConfig

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError

# -- HOOF -----------------------------------------------------------------------------------------


def uniform_flow(dx: float, dy: float, clips: int = 1, pairs: int = 3, size: int = 8) -> np.ndarray:
    """(clips, pairs, size, size, 2) flow that is (dx, dy) everywhere."""
    flow = np.zeros((clips, pairs, size, size, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def hoof(flows: np.ndarray, bins: int = 8, normalize: str = "l1") -> np.ndarray:
    descriptor = HoofDescriptor(HoofConfig(name="hoof", bins=bins, normalize=normalize))
    return descriptor.describe(np.zeros(flows.shape[:2] + (8, 8, 1), np.float32), flows, RunContext())


@pytest.mark.parametrize(
    ("dx", "dy", "expected_bin"),
    [
        (1.0, 0.0, 0),  # +x (right)
        (0.0, 1.0, 2),  # +y is down in image coordinates: angle pi/2, bin B/4
        (-1.0, 0.0, 4),
        (0.0, -1.0, 6),
        (1.0, 1.0, 1),  # exactly on the edge between bins 0 and 1: bins are [lo, hi)
        (-1.0, -1.0, 5),  # edge between bins 4 and 5
        (1.0, -1.0, 7),
        (0.3, 0.1, 0),
    ],
)
def test_uniform_flow_puts_all_mass_in_one_bin(dx: float, dy: float, expected_bin: int) -> None:
    descriptor = hoof(uniform_flow(dx, dy))
    expected = np.zeros(8, dtype=np.float32)
    expected[expected_bin] = 1.0
    assert descriptor.shape == (1, 8)
    assert np.array_equal(descriptor[0], expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bins", [1, 2, 3, 4, 6, 8, 12, 16, 32, 64])
def test_each_bins_lower_edge_belongs_to_that_bin(bins: int, dtype: type) -> None:
    # B directions on the bin edges 2 pi b / B (up to rounding), one per frame pair
    angles = 2 * math.pi * np.arange(bins) / bins
    flows = np.zeros((1, bins, 2, 2, 2), dtype=dtype)
    flows[..., 0] = np.cos(angles)[None, :, None, None]
    flows[..., 1] = np.sin(angles)[None, :, None, None]
    per_pair = hoof_histograms(flows, bins)[0]
    assert np.array_equal(np.argmax(per_pair, axis=1), np.arange(bins))
    assert np.allclose(per_pair.sum(axis=1), 4.0)  # 4 pixels of magnitude 1 each


def test_histogram_weights_by_magnitude_and_averages_frame_pairs() -> None:
    flows = np.zeros((1, 2, 2, 2, 2))
    flows[0, 0, 0, 0] = (3.0, 0.0)  # pair 0: one pixel moving right by 3
    flows[0, 0, 0, 1] = (0.0, 0.5)  # and one moving down by 0.5
    flows[0, 1, 1, 1] = (-2.0, 0.0)  # pair 1: one pixel moving left by 2
    per_pair = hoof_histograms(flows, 4)
    assert per_pair.shape == (1, 2, 4)
    assert np.allclose(per_pair[0], [[3.0, 0.5, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    raw = hoof(flows, bins=4, normalize="none")[0]
    assert np.allclose(raw, [1.5, 0.25, 1.0, 0.0])


def test_normalisations() -> None:
    rng = np.random.default_rng(0)
    flows = rng.standard_normal((5, 3, 8, 8, 2)).astype(np.float32)
    l1 = hoof(flows, bins=8, normalize="l1")
    assert l1.shape == (5, 8) and l1.dtype == np.float32
    assert np.allclose(l1.sum(axis=1), 1.0) and (l1 >= 0).all()
    l2 = hoof(flows, bins=8, normalize="l2")
    assert np.allclose(np.linalg.norm(l2, axis=1), 1.0)
    assert np.allclose(
        l2 / np.linalg.norm(l2, axis=1, keepdims=True), l1 / np.linalg.norm(l1, axis=1, keepdims=True)
    )


@pytest.mark.parametrize("normalize", ["l1", "l2", "none"])
def test_static_clip_gives_zeros_not_nan(normalize: str) -> None:
    flows = np.concatenate([uniform_flow(0.0, 0.0), uniform_flow(1.0, 0.0)])
    descriptor = hoof(flows, normalize=normalize)
    assert np.isfinite(descriptor).all()
    assert np.array_equal(descriptor[0], np.zeros(8))
    assert descriptor[1, 0] > 0


@pytest.mark.parametrize(("field", "value"), [("bins", 0), ("bins", -3), ("normalize", "max")])
def test_hoof_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigValueError) as raised:
        HoofDescriptor(HoofConfig(name="hoof", **{field: value}))
    assert raised.value.field == field


def test_hoof_bins_error_through_the_host(host) -> None:
    with pytest.raises(
        ConfigValueError, match=r"^descriptor\.bins=0 is not allowed: expected an integer >= 1"
    ):
        host.build("descriptor", {"name": "hoof", "bins": 0})


# -- Farnebäck ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pyr_scale", 0.0),
        ("pyr_scale", 1.0),
        ("levels", 0),
        ("winsize", 2),
        ("iterations", 0),
        ("poly_n", 6),
        ("poly_sigma", 0.0),
    ],
)
def test_farneback_refuses_bad_parameters(field: str, value: object, host) -> None:
    with pytest.raises(ConfigValueError) as raised:
        FarnebackFlow(FarnebackConfig(name="farneback", **{field: value}))
    assert raised.value.field == field
    with pytest.raises(ConfigValueError, match=rf"^motion\.{field}="):
        host.build("motion", {"name": "farneback", field: value})


def test_farneback_parameters_reach_opencv(ctx: RunContext) -> None:
    from mwga_plugins.datasets.synthetic import SyntheticConfig, SyntheticMotionBenchmark

    # 128 px frames: OpenCV (4.x) builds no pyramid level on small frames, so on the paper's 32 x 32
    # frames `levels` and `pyr_scale` change nothing (and `levels` nothing up to 64 px either).
    config = SyntheticConfig(name="synthetic", num_clips=6, num_frames=3, size=128)
    frames = SyntheticMotionBenchmark(config).load(ctx).train.frames
    default = FarnebackFlow(FarnebackConfig(name="farneback")).estimate(frames, ctx)
    assert default.shape == (6, 2, 128, 128, 2) and default.dtype == np.float32
    changes = [
        {"winsize": 7},
        {"iterations": 1},
        {"poly_n": 7, "poly_sigma": 1.5},
        {"gaussian_window": True},
        {"levels": 1},
        {"pyr_scale": 0.4},
    ]
    for change in changes:
        other = FarnebackFlow(FarnebackConfig(name="farneback", **change)).estimate(frames, ctx)
        assert not np.array_equal(other, default), change
    pair = FarnebackFlow(FarnebackConfig(name="farneback")).estimate_pair(
        frames[0, 0, ..., 0], frames[0, 1, ..., 0]
    )
    assert np.array_equal(pair, default[0, 0])


# -- simulated gradient ---------------------------------------------------------------------------


def analysed(descriptors: np.ndarray, ids: list[str]) -> AnalysedClips:
    n = len(ids)
    clips = ClipSet(np.zeros((n, 2, 4, 4, 1), np.float32), np.zeros(n, np.int64), ids)
    return AnalysedClips(clips=clips, descriptors=descriptors.astype(np.float32), static=np.zeros(n, bool))


def simulated(clips: AnalysedClips, seed: int = 0, **fields) -> np.ndarray:
    source = SimulatedGradient(SimulatedGradientConfig(name="simulated", virtual_dim=256, **fields))
    chunks = list(source.iter_gradients(clips, RunContext(seed=seed)))
    grads = np.zeros((1, len(clips), 256), np.float32)
    for chunk in chunks:
        assert chunk.grads.dtype == torch.float32 and chunk.grads.shape[0] == 1
        grads[:, chunk.indices] = chunk.grads.numpy()
    return grads[0]


def test_simulated_gradient_is_a_function_of_clip_id_and_descriptor() -> None:
    rng = np.random.default_rng(0)
    d = rng.random((3, 8))
    forward = simulated(analysed(d, ["a", "b", "c"]))
    backward = simulated(analysed(d[::-1], ["c", "b", "a"]))
    assert forward.shape == (3, 256)
    assert np.array_equal(forward, backward[::-1])
    assert np.array_equal(simulated(analysed(d[:1], ["a"]))[0], forward[0])
    # a different clip id draws different noise; a different run seed changes everything
    assert not np.allclose(simulated(analysed(d[:1], ["z"]))[0], forward[0])
    assert not np.allclose(simulated(analysed(d, ["a", "b", "c"]), seed=1), forward)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_noise_free_gradient_of_identical_descriptors_has_cosine_one() -> None:
    d = np.array([[0.5, 0.2, 0.3, 0.0], [0.5, 0.2, 0.3, 0.0], [0.0, 0.0, 0.2, 0.8]])
    grads = simulated(analysed(d, ["x", "y", "z"]), noise_scale=0.0)
    assert cosine(grads[0], grads[1]) == pytest.approx(1.0, abs=1e-6)
    assert cosine(grads[0], grads[2]) < 0.9


def test_noise_scale_sets_the_expected_cosine_of_identical_descriptors() -> None:
    # docs: identical descriptors have expected cosine 1 / (1 + noise_scale^2)
    d = np.tile(np.array([[0.5, 0.2, 0.3, 0.0]]), (40, 1))
    grads = simulated(analysed(d, [f"clip{i}" for i in range(40)]), noise_scale=1.0)
    cosines = [cosine(grads[i], grads[i + 1]) for i in range(0, 40, 2)]
    assert np.mean(cosines) == pytest.approx(0.5, abs=0.1)


def test_simulated_gradient_scales_with_the_descriptor_norm() -> None:
    d = np.array([[0.5, 0.2, 0.3, 0.0]])
    single = simulated(analysed(d, ["x"]))
    double = simulated(analysed(2 * d, ["x"]))
    assert np.allclose(double, 2 * single, rtol=1e-5)
    zero = simulated(analysed(np.zeros((1, 4)), ["x"]))
    assert np.array_equal(zero, np.zeros_like(zero))  # a static clip has no gradient


@pytest.mark.parametrize(("field", "value"), [("noise_scale", -0.1), ("virtual_dim", 0)])
def test_simulated_gradient_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigValueError) as raised:
        SimulatedGradient(SimulatedGradientConfig(name="simulated", **{field: value}))
    assert raised.value.field == field


# -- Gaussian projector ---------------------------------------------------------------------------


def project(grads: np.ndarray, dim: int = 64, seed: int = 0) -> np.ndarray:
    projector = GaussianProjector(GaussianProjectorConfig(name="gaussian", dim=dim))
    return projector.project(torch.from_numpy(grads.astype(np.float32)), RunContext(seed=seed)).numpy()


def test_projector_is_deterministic_and_seeded() -> None:
    grads = np.random.default_rng(0).standard_normal((5, 300))
    first = project(grads)
    assert first.shape == (5, 64) and first.dtype == np.float32
    assert np.array_equal(first, project(grads))
    assert not np.allclose(first, project(grads, seed=1))


def test_projection_matrix_does_not_depend_on_the_batch() -> None:
    # D above BLOCK_ROWS, so the matrix is built from several seeded blocks. Unit vectors read single
    # matrix rows out exactly, from both blocks, whichever rows share a call.
    d = BLOCK_ROWS + 700
    unit = np.zeros((6, d))
    unit[np.arange(6), [0, 1, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, d - 1]] = 1.0
    whole = project(unit)
    assert np.array_equal(np.concatenate([project(unit[:1]), project(unit[1:4]), project(unit[4:])]), whole)
    assert np.unique(whole, axis=0).shape[0] == 6  # six different rows
    # arbitrary rows too: float64 accumulation hides the batch-dependent summation order
    grads = np.random.default_rng(1).standard_normal((7, d))
    batch = project(grads)
    pieces = np.concatenate([project(grads[:3]), project(grads[3:4]), project(grads[4:])])
    assert np.array_equal(pieces, batch)


def test_projection_does_not_depend_on_the_thread_count() -> None:
    # a joblib worker runs torch with one thread; its features must equal the main process's
    grads = np.random.default_rng(4).standard_normal((6, 4096))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = project(grads, dim=128)
        torch.set_num_threads(max(2, threads))
        multi = project(grads, dim=128)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(single, multi)


def test_projection_is_linear_with_the_expected_matrix_statistics() -> None:
    dim, d = 256, 600
    matrix = project(np.eye(d), dim=dim)  # rows of the identity read the matrix out
    assert matrix.std() == pytest.approx(1 / math.sqrt(dim), rel=0.05)
    assert abs(matrix.mean()) < 0.01
    grads = np.random.default_rng(2).standard_normal((3, d))
    assert np.allclose(project(grads, dim=dim), grads @ matrix, atol=1e-4)


def test_projection_approximately_preserves_inner_products() -> None:
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((20, 2000)) / math.sqrt(2000)  # roughly unit vectors
    projected = project(grads, dim=2048).astype(np.float64)
    exact = grads @ grads.T
    approx = projected @ projected.T
    assert np.abs(np.diag(approx) / np.diag(exact) - 1).max() < 0.15
    off = ~np.eye(20, dtype=bool)
    assert np.abs(approx[off] - exact[off]).max() < 0.15


def test_projector_dim_error() -> None:
    with pytest.raises(ConfigValueError) as raised:
        GaussianProjector(GaussianProjectorConfig(name="gaussian", dim=0))
    assert raised.value.field == "dim"


# -- scorers --------------------------------------------------------------------------------------


def test_cosine_scorer() -> None:
    scorer = CosineScorer(CosineScorerConfig(name="cosine"))
    query = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)  # (K=1, Q=2, P=2); query 1 is all-zero
    train = np.array([[[2.0, 0.0], [0.0, 3.0], [-1.0, 1.0]]], np.float32)  # (K=1, N=3, P=2)
    scores = scorer.score(query, train, RunContext())
    assert scores.shape == (2, 3) and scores.dtype == np.float64
    assert np.allclose(scores, [[1.0, 0.0, -1 / math.sqrt(2)], [0.0, 0.0, 0.0]])


def test_cosine_scorer_averages_checkpoints() -> None:
    scorer = CosineScorer(CosineScorerConfig(name="cosine"))
    query = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # K=2, Q=1
    train = np.array([[[1.0, 0.0]], [[1.0, 0.0]]], np.float32)  # K=2, N=1
    assert np.allclose(scorer.score(query, train, RunContext()), [[0.5]])


def test_random_scorer_shape_and_seeding() -> None:
    scorer = RandomScorer(RandomScorerConfig(name="random"))
    assert RandomScorer.uses_features is False
    query, train = np.zeros((1, 4, 0), np.float32), np.zeros((1, 9, 0), np.float32)
    first = scorer.score(query, train, RunContext(seed=0))
    assert first.shape == (4, 9)
    assert (first >= 0).all() and (first < 1).all()
    assert len(np.unique(first)) == first.size
    assert np.array_equal(first, scorer.score(query, train, RunContext(seed=0)))
    assert not np.allclose(first, scorer.score(query, train, RunContext(seed=1)))
