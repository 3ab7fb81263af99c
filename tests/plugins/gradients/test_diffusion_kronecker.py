"""The ``diffusion`` source with a factorized projector (``projection=kronecker``): its reduced gradients
equal the explicit Kronecker matrices applied to its materialised gradients, for every engine, parameter
selection, contrast, region split and checkpoint ensemble, and the local executor uses them (bypassing
the raw gradient cache, which holds unreduced gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mwga_plugins.gradients.diffusion import DiffusionGradient
from mwga_plugins.projectors.kronecker import KroneckerProjector, KroneckerProjectorConfig
from test_diffusion_gradient import gradients, source

from mwga_core.api.context import RunContext
from mwga_core.diffusion.factorized import factor_shape
from mwga_core.pipeline.featurize import LocalExecutor, featurize
from mwga_core.pipeline.stages import RawGradients
from mwga_core.storage.stage_cache import StageCache
from mwga_core.testing import small_analysed

#: the tiny model has 8 channels: every factor side is reduced (patch_in's input is 16, spatial 72)
PROJECTOR = KroneckerProjector(KroneckerProjectorConfig(name="kronecker", dim=32, k_out=4, k_in=6))


def reduced(gradient: DiffusionGradient, clips, ctx: RunContext) -> np.ndarray:
    """(K, N, D') by clip index, from ``iter_reduced_gradients``."""
    out = {}
    for chunk in gradient.iter_reduced_gradients(clips, ctx, PROJECTOR):
        for column, index in enumerate(chunk.indices):
            out[int(index)] = chunk.grads[:, column].numpy()
    return np.stack([out[i] for i in range(len(clips))], axis=1)


def explicit_map(gradient: DiffusionGradient, ctx: RunContext) -> torch.Tensor:
    """The (D'_unit, D_unit) matrix the projector's layer factors stand for, on one gradient of the
    selected parameters: kron(P_out, P_in) per factorizable weight (per position cell), identity elsewhere.
    """
    module = gradient.trained.module()
    parameters = dict(module.named_parameters())
    c = gradient.config
    cells = c.regions**2 if c.region_split == "position" else 1
    blocks = []
    for name in gradient.selected_parameter_names(module):
        shape = factor_shape(module, name)
        if shape is None:
            block = torch.eye(parameters[name].numel())
        else:
            factors = PROJECTOR.layer_factors(name, *shape, ctx)
            block = torch.kron(factors.out, factors.inp)
        blocks.extend([block.double()] * cells)
    return torch.block_diag(*blocks)


def assert_close_per_clip(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    error = np.linalg.norm(actual - expected, axis=-1) / np.maximum(np.linalg.norm(expected, axis=-1), 1e-30)
    assert error.max() < 1e-5, error.max()


CASES = {
    "all_batched": {"params": "all"},
    "all_vmap": {"params": "all", "engine": "vmap"},
    "all_loop_two_timesteps": {"params": "all", "engine": "loop", "timesteps": [10, 60]},
    # the default method's shape: temporal weights, reverse_static, 2 x 2 loss regions, two checkpoints
    "method_ours": {
        "params": r"temporal\.weight",
        "timesteps": [10, 40],
        "weighting": "none",
        "contrast": "reverse_static",
        "regions": 2,
        "checkpoints": [3, 6],
    },
    "position_cells_reverse": {
        "params": "spatial|temporal|norm",
        "contrast": "reverse",
        "regions": 2,
        "region_split": "position",
    },
    "static_contrast_mask": {"params": "all", "contrast": "static", "weighting": "mask", "chunk_size": 3},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reduced_gradients_equal_the_explicit_kronecker_map(ctx: RunContext, case: str) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, **CASES[case])
    full = torch.from_numpy(gradients(gradient, train, ctx)).double()  # (K, N, D), materialised
    matrix = explicit_map(gradient, ctx)
    segments = full.shape[-1] // matrix.shape[1]  # contrast parts x loss cells
    assert segments * matrix.shape[1] == full.shape[-1]
    expected = (full.reshape(*full.shape[:2], segments, -1) @ matrix.T).reshape(*full.shape[:2], -1)
    actual = reduced(gradient, train, ctx)
    assert actual.shape[-1] < full.shape[-1]
    assert np.abs(actual).max() > 0
    assert_close_per_clip(actual, expected.numpy())


def test_reduced_gradients_are_bit_deterministic_and_chunking_free(ctx: RunContext) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, params="temporal", timesteps=[10, 60])
    first = reduced(gradient, train, ctx)
    np.testing.assert_array_equal(first, reduced(gradient, train, ctx))
    subset = reduced(gradient, train.subset(np.array([5, 2])), ctx)
    np.testing.assert_allclose(subset[0], first[0, [5, 2]], rtol=1e-5, atol=1e-8)


def test_the_local_executor_projects_the_reduced_gradients_and_bypasses_the_raw_cache(
    ctx: RunContext, tmp_path
) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train)
    cache = StageCache(tmp_path / "stage-cache")
    raw = RawGradients(cache, "gradients-key", "train")
    features = featurize(train, LocalExecutor(gradient, PROJECTOR, ctx), ctx, None, raw)
    expected = PROJECTOR.project(torch.from_numpy(reduced(gradient, train, ctx)[0]), ctx).numpy()
    assert features.shape == (1, len(train), 32)
    np.testing.assert_allclose(features[0], expected, rtol=1e-5, atol=1e-7)
    assert cache.events == []  # neither read nor written: these are not the raw gradients
    assert not (tmp_path / "stage-cache" / "stages").exists()
