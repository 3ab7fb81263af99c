"""projection=kronecker: the factorized per-layer projection equals the explicit Kronecker matrix applied
to the materialised gradient, keeps the JL tolerance of the other projectors, and is sparse_jl for a
source without layer factors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mwga_plugins.projectors.kronecker import KroneckerProjector, KroneckerProjectorConfig
from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig
from torch import nn

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.projectors import FactorizedProjector, factorizes
from mwga_core.diffusion.factorized import factor_shape, project_weight_gradient
from mwga_core.diffusion.per_sample import per_sample_gradients


def random_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def jl_epsilon(dim: int, vectors: int, failure: float) -> float:
    """As in test_projectors.py: the smallest eps with vectors * 2 exp(-P (eps^2/2 - eps^3/3) / 2) <=
    failure (Dasgupta and Gupta)."""
    target = math.log(2 * vectors / failure) * 2 / dim
    eps = 0.0
    while eps**2 / 2 - eps**3 / 3 < target:
        eps += 1e-3
    return eps


def kronecker(dim: int = 64, k_out: int = 4, k_in: int = 8, **extra) -> KroneckerProjector:
    return KroneckerProjector(KroneckerProjectorConfig(dim=dim, k_out=k_out, k_in=k_in, **extra))


class Tokens(nn.Module):
    """A Linear applied per token of each sample (rows: samples, then tokens), then a nonlinearity."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(x))


class FrameRows(nn.Module):
    """A Linear that sees (samples * frames) rows, a sample-major flattening, as a per-frame layer does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, frames, features = x.shape
        return torch.tanh(self.layer(x.reshape(b * frames, features))).reshape(b, frames, -1)


def conv_model(conv: nn.Module) -> nn.Module:
    return nn.Sequential(conv, nn.Tanh())


LAYERS = {
    "linear_tokens": (Tokens, (4, 7, 6)),
    "linear_rows": (FrameRows, (4, 3, 6)),
    "conv1d": (lambda: conv_model(nn.Conv1d(3, 4, 3, padding=1, stride=2)), (4, 3, 11)),
    "conv2d_dilated": (lambda: conv_model(nn.Conv2d(3, 5, (3, 2), padding=(2, 1), dilation=2)), (4, 3, 7, 6)),
    "conv3d_temporal": (lambda: conv_model(nn.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0))), (4, 3, 5, 4, 4)),
    "conv3d_spatial": (lambda: conv_model(nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1))), (4, 3, 5, 4, 4)),
}


def layer_gradients(module: nn.Module, x: torch.Tensor, factors=None, regions: int = 1) -> dict:
    params = {name: p.detach() for name, p in module.named_parameters()}

    def losses(forward):
        return (forward(x) ** 2).reshape(len(x), -1).sum(1)

    return per_sample_gradients(module, params, {}, losses, len(x), regions=regions, factors=factors)


@pytest.mark.parametrize("regions", [1, 2])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_factorized_layer_projection_equals_the_explicit_kronecker_matrix(layer: str, regions: int) -> None:
    build, shape = LAYERS[layer]
    if regions > 1 and len(shape) < 4:
        pytest.skip("position cells need a spatial output")
    torch.manual_seed(0)
    module = build()
    x = torch.randn(shape)
    weight = next(name for name, _ in module.named_parameters() if name.endswith("weight"))
    d_out, d_in = factor_shape(module, weight)
    factors = kronecker(k_out=3, k_in=4).layer_factors(weight, d_out, d_in, RunContext(seed=1))
    assert tuple(factors.out.shape) == (3, d_out) and tuple(factors.inp.shape) == (4, d_in)

    projected = layer_gradients(module, x, {weight: factors}, regions)
    materialised = layer_gradients(module, x, None, regions)
    # the explicit (k_out k_in, d_out d_in) Kronecker matrix on each sample's (and cell's) flat gradient
    explicit = torch.kron(factors.out.double(), factors.inp.double())
    flat = materialised[weight].double().reshape(-1, d_out * d_in)
    expected = (flat @ explicit.T).reshape(projected[weight].shape)
    error = (projected[weight].double() - expected).norm() / expected.norm()
    assert float(error) < 1e-5
    # the bias has no factor form: it is the materialised gradient, bit for bit
    bias = weight.replace("weight", "bias")
    assert torch.equal(projected[bias], materialised[bias])


def test_only_plain_linear_and_convolution_weights_have_a_factor_form() -> None:
    module = nn.Sequential(
        nn.Linear(4, 3),
        nn.Conv2d(2, 6, 3, groups=2),
        nn.Conv2d(2, 2, 3, padding="same"),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.GroupNorm(1, 2),
        nn.Embedding(5, 2),
        nn.Conv3d(2, 7, (3, 1, 2)),
    )
    shapes = {name: factor_shape(module, name) for name, _ in module.named_parameters()}
    assert shapes == {
        "0.weight": (3, 4),
        "0.bias": None,
        "1.weight": None,  # grouped
        "1.bias": None,
        "2.weight": None,  # padding="same"
        "2.bias": None,
        "3.weight": None,  # reflect padding
        "3.bias": None,
        "4.weight": None,
        "4.bias": None,
        "5.weight": None,
        "6.weight": (7, 2 * 3 * 1 * 2),
        "6.bias": None,
    }


def test_materialised_reduction_is_the_kronecker_matrix() -> None:
    factors = kronecker(k_out=2, k_in=3).layer_factors("w", 4, 5, RunContext(seed=0))
    grads = torch.randn(6, 4, 5, dtype=torch.float32)
    reduced = project_weight_gradient(grads, factors).reshape(6, -1)
    explicit = grads.reshape(6, -1) @ torch.kron(factors.out, factors.inp).T
    np.testing.assert_allclose(reduced.numpy(), explicit.numpy(), rtol=1e-5, atol=1e-6)


def test_factors_are_seeded_per_layer_and_identity_when_k_covers_the_side() -> None:
    projector, ctx = kronecker(k_out=4, k_in=8), RunContext(seed=3)
    first = projector.layer_factors("blocks.0.temporal.weight", 48, 144, ctx)
    again = kronecker(k_out=4, k_in=8).layer_factors("blocks.0.temporal.weight", 48, 144, RunContext(seed=3))
    assert torch.equal(first.out, again.out) and torch.equal(first.inp, again.inp)
    other_layer = projector.layer_factors("blocks.1.temporal.weight", 48, 144, ctx)
    assert not torch.equal(first.inp, other_layer.inp)
    other_seed = projector.layer_factors("blocks.0.temporal.weight", 48, 144, RunContext(seed=4))
    assert not torch.equal(first.inp, other_seed.inp)
    small = projector.layer_factors("patch_out.weight", 3, 8, ctx)  # k_out >= 3, k_in >= 8: exact
    assert torch.equal(small.out, torch.eye(3)) and torch.equal(small.inp, torch.eye(8))


def test_without_layer_factors_it_is_sparse_jl(ctx: RunContext) -> None:
    x = random_rows(9, 5000, seed=4)
    projected = kronecker(dim=96, sparsity=2).project(x, ctx)
    sparse = SparseJLProjector(SparseJLProjectorConfig(dim=96, sparsity=2)).project(x, ctx)
    assert torch.equal(projected, sparse)


def test_a_bad_sparsity_names_the_field() -> None:
    with pytest.raises(ConfigValueError, match="sparsity"):
        kronecker(dim=8, sparsity=9)


def test_only_a_factorizing_source_with_a_factorized_projector_factorizes() -> None:
    class Source:
        def iter_reduced_gradients(self, clips, ctx, projector):
            return iter(())

    sparse = SparseJLProjector(SparseJLProjectorConfig(dim=8))
    assert isinstance(kronecker(), FactorizedProjector)
    assert factorizes(Source(), kronecker())
    assert not factorizes(Source(), sparse)
    assert not factorizes(object(), kronecker())


def layer_rows(projector: KroneckerProjector, x: torch.Tensor, shape: tuple[int, int], ctx) -> torch.Tensor:
    """Rows of one (d_out, d_in) layer's gradients through the whole map: factors, then stage 2."""
    factors = projector.layer_factors("layer.weight", *shape, ctx)
    return projector.project(
        project_weight_gradient(x.reshape(len(x), *shape), factors).reshape(len(x), -1), ctx
    )


def test_norms_and_inner_products_within_jl_tolerance() -> None:
    # The same vectors, P and bound as the other projectors' JL test (tests/plugins/projectors/
    # test_projectors.py): 50 random rows of D = 4096, here one 64 x 64 layer's weight gradient, through
    # a 32 x 32 Kronecker sketch (1024) and sparse JL to P = 512. The composed map's variance is about
    # 2/1024 + 2/512 for these full-rank gradients, still well inside eps ~= 0.41 (6.5 sigma of P = 512).
    n, p = 50, 512
    eps = jl_epsilon(p, n + n * (n - 1), 1e-3)
    x = random_rows(n, 4096, seed=11)
    ctx = RunContext(seed=5)
    y = layer_rows(kronecker(dim=p, k_out=32, k_in=32), x, (64, 64), ctx).double()
    gram, projected = (x.double() @ x.double().T), y @ y.T
    norms = torch.diag(gram)
    assert float(((torch.diag(projected) - norms) / norms).abs().max()) <= eps
    bound = eps * (norms[:, None] + norms[None, :]) / 2
    assert bool(((projected - gram).abs() <= bound).all())


def test_inner_products_preserved_in_expectation() -> None:
    # averaged over independent maps (seeds: layer factors and sparse map), with the other projectors'
    # tolerance 0.05 |x||y|. A Kronecker map scatters more than a dense one of the same size (each side
    # adds its own error, about 2 ||G^T G||_F^2 / (k_out ||G||_F^4) and the same with G G^T / k_in), here
    # a per-map std of ~0.17, so 200 maps (not 50) keep the standard error near 0.01: a scaling bug
    # (k instead of sqrt(k)) would be far off.
    x = random_rows(2, 24 * 30, seed=3)
    x[1] = 0.6 * x[0] + 0.8 * x[1]
    projector = kronecker(dim=256, k_out=16, k_in=24)
    estimates = torch.stack(
        [
            (lambda y: y @ y.T)(layer_rows(projector, x, (24, 30), RunContext(seed=s)).double())
            for s in range(200)
        ]
    ).mean(0)
    exact = x.double() @ x.double().T
    scale = math.sqrt(float(exact[0, 0] * exact[1, 1]))
    assert float((estimates - exact).abs().max()) / scale < 0.05
