"""Factorized (Kronecker) projection: each layer's weight gradient is projected from its two factors.

A linear or convolution layer's per-clip weight gradient is a sum over positions s of an outer product,
``G = sum_s g_s u_s^T`` (g: the gradient at the layer's output, u: its input or input window), so the
Kronecker projection P_out (x) P_in of G is ``P_out G P_in^T = sum_s (P_out g_s) (P_in u_s)^T``: the two
factors are projected first and only a k_out x k_in product per clip is formed, never the d_out x d_in
gradient (the idea of LoGra, Choe et al. 2024). P_out (k_out, d_out) and P_in (k_in, d_in) have i.i.d.
N(0, 1/k) entries drawn per layer from a seed derived from (run seed, parameter name, side, d, k), so
``E[P^T P] = I`` and inner products are preserved in expectation; a side with k >= d is the identity
(nothing to gain from a random map that does not shrink it).

The map is two stages (:class:`~mwga_core.api.projectors.FactorizedProjector`): the gradient source
applies the layer factors (stage 1; ``gradient=diffusion`` does, in every engine, per term, before its
contrasts and regions, which are linear), and :meth:`KroneckerProjector.project` maps what it yields
(the k_out x k_in blocks beside every parameter without a factor form: biases, norms, embeddings) with
``sparse_jl`` to ``dim`` (stage 2). For a source that hands no layer factors, stage 1 is the identity and
the projector is exactly ``sparse_jl`` with the same ``dim`` and ``sparsity``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.projectors import FactorizedProjector, LayerFactors, ProjectorConfig
from mwga_core.config.checks import at_least

if TYPE_CHECKING:
    import torch


@dataclass
class KroneckerProjectorConfig(ProjectorConfig):
    """P; the per-layer sketch k_out x k_in; and the final sparse JL's non-zeros per coordinate."""

    dim: int = field(default=128, metadata=at_least(1))
    k_out: int = field(default=16, metadata=at_least(1))
    k_in: int = field(default=16, metadata=at_least(1))
    sparsity: int = 1


class KroneckerProjector(FactorizedProjector):
    """Per layer P_out G P_in^T (from the factors, by the gradient source), then sparse JL to ``dim``."""

    def __init__(self, config: KroneckerProjectorConfig) -> None:
        super().__init__(config)
        sketch = SparseJLProjectorConfig(name="sparse_jl", dim=config.dim, sparsity=config.sparsity)
        self.sketch = SparseJLProjector(sketch)  # refuses a sparsity outside [1, dim], naming the field

    def layer_factors(self, parameter: str, d_out: int, d_in: int, ctx: RunContext) -> LayerFactors:
        """Shape: out (min(k_out, d_out), d_out), inp (min(k_in, d_in), d_in) float32 on the CPU."""
        return LayerFactors(
            side_projection(ctx, parameter, "out", d_out, self.config.k_out),
            side_projection(ctx, parameter, "in", d_in, self.config.k_in),
        )

    def project(self, grads: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Stage 2. Shape: grads (n, D') -> (n, P) float32 on the device of ``grads``."""
        return self.sketch.project(grads, ctx)


def side_projection(ctx: RunContext, parameter: str, side: str, d: int, k: int) -> torch.Tensor:
    """One side's (min(k, d), d) map: N(0, 1/k) entries seeded by (parameter, side, d, k), or the identity
    when k >= d."""
    import torch

    if k >= d:
        return torch.eye(d, dtype=torch.float32)
    generator = torch.Generator().manual_seed(ctx.seed_for("kronecker-projection", parameter, side, d, k))
    return torch.randn((k, d), generator=generator, dtype=torch.float32) / math.sqrt(k)


@hookimpl
def mwga_register_projectors(register):
    register(
        "kronecker",
        KroneckerProjector,
        KroneckerProjectorConfig,
        description="P_out (x) P_in per layer from the gradient's factors (LoGra), then sparse JL",
    )
