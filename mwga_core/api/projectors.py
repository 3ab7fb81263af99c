"""Projectors: seeded random maps from gradient space (D dims) to feature space (P dims).

Built-in implementations (``plugins/projectors``):
    gaussian: dense Gaussian JL matrix, generated block by block so it never exists whole.
    rademacher: dense +-1/sqrt(P) JL matrix, generated block by block.
    sparse_jl: Kane-Nelson sparse JL (CountSketch for sparsity 1), hashed block by block.
    fastfood: Fastfood transform (Hadamard, Rademacher and Gaussian diagonals, permutation), O(D log D).
    none: no projection (P = D).

A projector is a pure function of (seed, D, P): training and query gradients projected in different
calls, processes or runs land in the same space. Each output row depends only on its input row, so
how the rows are chunked does not change the map (only, for the dense ones, float rounding in matmul).
Random numbers are drawn on the CPU from seeded generators and moved to the gradients' device, so CPU
and CUDA runs use the same map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig

if TYPE_CHECKING:
    import torch


@dataclass
class ProjectorConfig(ComponentConfig):
    """Base config for projectors."""


class Projector(ABC):
    """Project gradients; the same (ctx.seed, D) must always give the same map."""

    def __init__(self, config: ProjectorConfig) -> None:
        check_fields(config)
        self.config = config

    @abstractmethod
    def project(self, grads: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Project a batch.

        Shape:
            grads: (n, D) float32.
            returns: (n, P) float32 on the same device.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def project_by_row_blocks(
    grads: torch.Tensor,
    dim: int,
    make_block: Callable[[int, int], torch.Tensor],
    block_rows: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """``grads @ W * scale`` for a (D, P) matrix W that exists only one row block at a time.

    ``make_block(block, rows)`` returns rows ``block * block_rows`` to ``block * block_rows + rows`` of W
    as a float32 CPU tensor; it must depend only on (block, rows) and its seeds, so that every call sees
    the same W. ``block_rows`` is part of the matrix's definition: changing it changes W.

    Shape:
        grads: (n, D) float32.
        make_block(block, rows): (rows, dim) float32.
        returns: (n, dim) float32 on the device of ``grads``.
    """
    import torch

    n, d = grads.shape
    # A float32 CPU matmul sums in an order that depends on the thread count and the batch shape (a
    # joblib worker runs 1 thread), so one clip could get different features in different runs.
    # Summing in float64 and rounding to float32 at the end gives the same float32 result in practice.
    accumulate = torch.float64 if grads.device.type == "cpu" else torch.float32
    out = torch.zeros((n, dim), dtype=accumulate, device=grads.device)
    for block, start in enumerate(range(0, d, block_rows)):
        rows = min(block_rows, d - start)
        matrix = make_block(block, rows).to(device=grads.device, dtype=accumulate)
        out += grads[:, start : start + rows].to(accumulate) @ matrix
    return (out * scale).to(torch.float32)
