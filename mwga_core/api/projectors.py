"""Projectors: seeded random maps from gradient space (D dims) to feature space (P dims).

Built-in implementations (``plugins/projectors``):
    gaussian: dense Gaussian JL matrix, generated block by block so it never exists whole.
    rademacher: dense +-1/sqrt(P) JL matrix, generated block by block.
    sparse_jl: Kane-Nelson sparse JL (CountSketch for sparsity 1), hashed block by block.
    fastfood: Fastfood transform (Hadamard, Rademacher and Gaussian diagonals, permutation), O(D log D).
    kronecker: P_out (x) P_in on each linear / convolution layer's weight gradient, then sparse JL
        (a :class:`FactorizedProjector`).
    none: no projection (P = D).

A projector is a pure function of (seed, D, P): training and query gradients projected in different
calls, processes or runs land in the same space. Each output row depends only on its input row, so
how the rows are chunked does not change the map (only, for the dense ones, float rounding in matmul).
Random numbers are drawn on the CPU from seeded generators and moved to the gradients' device, so CPU
and CUDA runs use the same map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig

if TYPE_CHECKING:
    import torch

    from mwga_core.api.clips import AnalysedClips
    from mwga_core.api.gradients import GradientChunk


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


# -- factorized projection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFactors:
    """One layer's Kronecker projection P_out (x) P_in: it maps the layer's weight gradient G (d_out, d_in)
    to P_out G P_in^T (k_out, k_in), i.e. ``kron(P_out, P_in) @ G.flatten()``.

    Shape:
        out: (k_out, d_out) float32.
        inp: (k_in, d_in) float32.
    """

    out: torch.Tensor
    inp: torch.Tensor

    def to(self, device: str | torch.device) -> LayerFactors:
        """Both factors on ``device``."""
        return LayerFactors(self.out.to(device), self.inp.to(device))


class FactorizedProjector(Projector):
    """A projector whose map begins with a Kronecker projection of each layer's weight gradient.

    Its map is ``project(reduce(g))``. ``reduce`` replaces the weight gradient G (d_out, d_in) of every
    layer with a factor form, ``G = sum_s g_s u_s^T`` over the layer's positions s (a linear layer: u_s
    its input; a convolution: the input window, flattened as the weight's (C_in, *kernel)), by
    ``P_out G P_in^T`` (:meth:`layer_factors`), and keeps every other column as it is. A gradient source
    that knows its layers (a :class:`FactorizingSource`) applies ``reduce`` itself from the two factors,
    ``sum_s (P_out g_s) (P_in u_s)^T``, without ever forming G; for any other source ``reduce`` is the
    identity. :meth:`project` maps what the source yields, as any projector does.
    """

    @abstractmethod
    def layer_factors(self, parameter: str, d_out: int, d_in: int, ctx: RunContext) -> LayerFactors:
        """The factors for the weight ``parameter`` (its name in the model), a function of
        (ctx.seed, parameter, d_out, d_in) only, so every call, process and run sees the same map."""


@runtime_checkable
class FactorizingSource(Protocol):
    """A gradient source that can apply a :class:`FactorizedProjector`'s layer factors itself."""

    def iter_reduced_gradients(
        self, clips: AnalysedClips, ctx: RunContext, projector: FactorizedProjector
    ) -> Iterator[GradientChunk]:
        """As ``iter_gradients``, each factorizable weight's columns replaced by ``P_out G P_in^T``
        (flattened, ``k_out * k_in`` columns) and every other column as ``iter_gradients`` yields it."""
        ...


def factorizes(source: object, projector: Projector) -> bool:
    """Whether ``source`` applies ``projector``'s layer factors itself (``iter_reduced_gradients``)."""
    return isinstance(projector, FactorizedProjector) and isinstance(source, FactorizingSource)
