"""Fastfood projection (Le, Sarlos and Smola 2013), the JL map MOTIVE uses, in O(D log D) per clip.

The input is zero-padded to L = 2^ceil(log2 D) dimensions. One block maps it to L outputs:

    V x = S H G Pi H B x / sqrt(L)

with B a diagonal of random signs, H the (unnormalised, +-1) Walsh-Hadamard transform, Pi a random
permutation, G a diagonal of standard normals and S a diagonal s_i / ||G||_F with s_i ~ chi(L), which
gives every row of V the norm distribution of a Gaussian row. With u = G / ||G|| uniform on the sphere
and independent of s, E[(V x)_i^2] = E[s_i^2] / L * ||x||^2 = ||x||^2 exactly, so after the final
1/sqrt(P) the map preserves squared norms (and, by polarisation, inner products) in expectation.

When P > L, ceil(P / L) independent blocks are stacked; the first P outputs are kept. Each block's
diagonals and permutation come from a seed derived from (run seed, D, P, block): only O(L) numbers are
stored, never a P x D matrix. Every operation acts on one row at a time, so chunking the rows differently
gives bit-identical features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.projectors import Projector, ProjectorConfig
from mwga_core.config.checks import at_least

if TYPE_CHECKING:
    import torch


@dataclass
class FastfoodProjectorConfig(ProjectorConfig):
    """P, the number of output dimensions (MOTIVE uses 512)."""

    dim: int = field(default=128, metadata=at_least(1))


def walsh_hadamard_(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform of every row, in place (Sylvester ordering).

    A butterfly recursion over log2(L) levels. Levels are taken two at a time (radix 4: a quadruple
    (a, b, c, d) becomes (a+b+c+d, a-b+c-d, a+b-c-d, a-b-c+d)), which halves the passes over memory;
    an odd last level is a radix-2 pass (a, b) -> (a+b, a-b).

    Shape:
        x: (n, L) float tensor, L a power of two, contiguous; it is overwritten.
        returns: x, equal to x @ H_L with H_L the symmetric +-1 Sylvester-Hadamard matrix.
    """
    import torch

    n, length = x.shape
    if length & (length - 1):
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-two length, got {length}")
    if not x.is_contiguous():
        raise ValueError("walsh_hadamard_ works in place and needs a contiguous tensor")
    half = 1
    while half * 4 <= length:
        a, b, c, d = x.view(n, length // (4 * half), 4, half).unbind(2)
        sum_ab, diff_ab, sum_cd, diff_cd = a + b, a - b, c + d, c - d
        torch.add(sum_ab, sum_cd, out=a)
        torch.add(diff_ab, diff_cd, out=b)
        torch.sub(sum_ab, sum_cd, out=c)
        torch.sub(diff_ab, diff_cd, out=d)
        half *= 4
    if half < length:
        a, b = x.view(n, 2, half).unbind(1)
        sum_ab = a + b
        torch.sub(a, b, out=b)
        a.copy_(sum_ab)
    return x


class FastfoodProjector(Projector):
    """x -> [V_1 x; V_2 x; ...][:P] / sqrt(P) with V_b the seeded Fastfood blocks."""

    def project(self, grads, ctx: RunContext):
        """Shape: grads (n, D) -> (n, P) float32 on the device of ``grads``."""
        import torch

        n, d = grads.shape
        p = self.config.dim
        length = 1 << max(d - 1, 0).bit_length()
        device = grads.device
        outputs = []
        for block in range(math.ceil(p / length)):
            signs, permutation, gaussian, scale = self.block_parameters(ctx, d, p, length, block)
            y = torch.zeros((n, length), dtype=torch.float32, device=device)
            y[:, :d] = grads
            y[:, :d].mul_(signs[:d].to(device))
            walsh_hadamard_(y)
            y = y[:, permutation.to(device)].mul_(gaussian.to(device))
            walsh_hadamard_(y)
            keep = min(length, p - block * length)
            outputs.append(y[:, :keep] * scale[:keep].to(device))
        return torch.cat(outputs, dim=1) * (1.0 / math.sqrt(p))

    @staticmethod
    def block_parameters(ctx: RunContext, d: int, p: int, length: int, block: int):
        """B (signs), Pi, G and S / sqrt(L) of one block: float32 / int64 CPU tensors of length L."""
        import torch

        rng = ctx.rng("fastfood-projection", d, p, block)
        signs = rng.integers(0, 2, length) * 2.0 - 1.0
        permutation = rng.permutation(length)
        gaussian = rng.standard_normal(length)
        row_norm = math.sqrt(length) * math.sqrt(float((gaussian**2).sum()))
        scale = (rng.chisquare(length, length) ** 0.5) / row_norm
        return (
            torch.from_numpy(signs.astype("float32")),
            torch.from_numpy(permutation),
            torch.from_numpy(gaussian.astype("float32")),
            torch.from_numpy(scale.astype("float32")),
        )


@hookimpl
def mwga_register_projectors(register):
    register(
        "fastfood",
        FastfoodProjector,
        FastfoodProjectorConfig,
        description="Fastfood (Hadamard) JL as in MOTIVE, O(D log D)",
    )
