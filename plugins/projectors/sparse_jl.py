"""Sparse Johnson-Lindenstrauss projection (Kane and Nelson's block construction; CountSketch at s = 1).

The P outputs are split into ``sparsity`` = s contiguous groups of (nearly) equal size. Every input
coordinate j is hashed to one bucket in each group, with an independent random sign per bucket, and
adds ``sign * x_j / sqrt(s)`` there. Each column of the implicit (P, D) matrix therefore has exactly s
non-zeros +-1/sqrt(s) in distinct rows, so E[<Sx, Sy>] = <x, y>, and projecting costs O(s D) instead of
O(P D). Buckets and signs are drawn in blocks of ``BLOCK_ROWS`` input coordinates, each from a seed
derived from (run seed, D, P, s, block): nothing of size P x D is ever built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.projectors import Projector, ProjectorConfig
from mwga_core.config.checks import at_least

#: input coordinates hashed at once; part of the map's definition, not a tuning knob
BLOCK_ROWS = 65536


@dataclass
class SparseJLProjectorConfig(ProjectorConfig):
    """P, and s: non-zeros per input coordinate (1 = CountSketch; larger s lowers the variance)."""

    dim: int = field(default=128, metadata=at_least(1))
    sparsity: int = 1


class SparseJLProjector(Projector):
    """x -> S x with S a seeded sparse sign matrix, s non-zeros +-1/sqrt(s) per column."""

    def __init__(self, config: SparseJLProjectorConfig) -> None:
        super().__init__(config)
        if not 1 <= config.sparsity <= config.dim:
            raise ConfigValueError("sparsity", config.sparsity, f"an integer from 1 to dim={config.dim}")

    def project(self, grads, ctx: RunContext):
        """Shape: grads (n, D) -> (n, P) float32 on the device of ``grads``."""
        import torch

        n, d = grads.shape
        p, s = self.config.dim, self.config.sparsity
        bounds = [group * p // s for group in range(s + 1)]
        out = torch.zeros((n, p), dtype=torch.float32, device=grads.device)
        for block, start in enumerate(range(0, d, BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, d - start)
            generator = torch.Generator().manual_seed(ctx.seed_for("sparse-jl-projection", d, p, s, block))
            values = grads[:, start : start + rows].to(torch.float32)
            for group in range(s):
                low, high = bounds[group], bounds[group + 1]
                buckets = torch.randint(low, high, (rows,), generator=generator)
                signs = torch.randint(0, 2, (rows,), generator=generator, dtype=torch.float32)
                signs = signs.mul_(2.0).sub_(1.0)
                # index_add_ on the CPU sums in index order: the result is bit-identical between calls.
                out.index_add_(1, buckets.to(grads.device), values * signs.to(grads.device))
        return out * (1.0 / math.sqrt(s))


@hookimpl
def mwga_register_projectors(register):
    register(
        "sparse_jl",
        SparseJLProjector,
        SparseJLProjectorConfig,
        description="sparse JL / CountSketch, O(sD)",
    )
