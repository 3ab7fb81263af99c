"""Dense Johnson-Lindenstrauss projections, streamed block by block: one implementation for every entry
distribution.

The (D, P) matrix W has i.i.d. entries of variance 1/P, so inner products are preserved in expectation.
It is generated in blocks of ``BLOCK_ROWS`` rows, each from its own seed derived from (run seed,
``<distribution>-projection``, D, P, block), so the full matrix never exists in memory and every call,
process or run sees the same matrix. A subclass only names its :attr:`DenseJLProjector.distribution`:

* ``gaussian``: N(0, 1/P) entries (:mod:`mwga_plugins.projectors.gaussian`);
* ``rademacher``: +-1/sqrt(P) with equal probability, Achlioptas' database-friendly JL, with the same
  tolerance as a Gaussian matrix (:mod:`mwga_plugins.projectors.rademacher`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from mwga_core.api.context import RunContext
from mwga_core.api.projectors import Projector, project_by_row_blocks

if TYPE_CHECKING:
    import torch

#: rows of the projection matrix generated at once; part of the matrix's definition, not a tuning knob
BLOCK_ROWS = 4096


def gaussian_block(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, dim) float32 standard normals."""
    import torch

    return torch.randn((rows, dim), generator=generator, dtype=torch.float32)


def rademacher_block(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, dim) float32 signs +-1 with equal probability."""
    import torch

    bits = torch.randint(0, 2, (rows, dim), generator=generator, dtype=torch.float32)
    return bits.mul_(2.0).sub_(1.0)


#: distribution name -> unit-variance block generator (scaled by 1/sqrt(P) after the product)
DISTRIBUTIONS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "gaussian": gaussian_block,
    "rademacher": rademacher_block,
}


class DenseJLProjector(Projector):
    """x -> x W / sqrt(P) with W's unit-variance entries drawn from :attr:`distribution`, block by block.

    The config must have ``dim`` (P).
    """

    #: a key of :data:`DISTRIBUTIONS`; also names the seeds, so each distribution has its own matrix
    distribution: ClassVar[str]

    def project(self, grads: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Shape: grads (n, D) float32 -> (n, P) float32 on the device of ``grads``."""
        import torch

        d, p = grads.shape[1], self.config.dim
        draw = DISTRIBUTIONS[self.distribution]
        purpose = f"{self.distribution}-projection"

        def make_block(block: int, rows: int) -> torch.Tensor:
            return draw(rows, p, torch.Generator().manual_seed(ctx.seed_for(purpose, d, p, block)))

        return project_by_row_blocks(grads, p, make_block, BLOCK_ROWS, scale=1.0 / math.sqrt(p))
