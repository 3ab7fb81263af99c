"""Dense Rademacher Johnson-Lindenstrauss projection, streamed block by block.

The (D, P) matrix has i.i.d. entries +-1/sqrt(P) with equal probability (Achlioptas' database-friendly
JL), so inner products are preserved in expectation with the same tolerance as a Gaussian matrix. Rows
are generated in blocks of ``BLOCK_ROWS`` from seeds derived from (run seed, D, P, block), so the full
matrix never exists in memory and every call, process or run sees the same matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.projectors import Projector, ProjectorConfig, project_by_row_blocks

#: rows of the projection matrix generated at once; part of the matrix's definition, not a tuning knob
BLOCK_ROWS = 4096


@dataclass
class RademacherProjectorConfig(ProjectorConfig):
    """P, the number of output dimensions."""

    dim: int = 128


class RademacherProjector(Projector):
    """x -> x W with W_ij = +-1/sqrt(P), W regenerated block by block from seeds."""

    def __init__(self, config: RademacherProjectorConfig) -> None:
        super().__init__(config)
        if config.dim < 1:
            raise ConfigValueError("dim", config.dim, "an integer >= 1")

    def project(self, grads, ctx: RunContext):
        import torch

        d, p = grads.shape[1], self.config.dim

        def make_block(block: int, rows: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(ctx.seed_for("rademacher-projection", d, p, block))
            bits = torch.randint(0, 2, (rows, p), generator=generator, dtype=torch.float32)
            return bits.mul_(2.0).sub_(1.0)

        return project_by_row_blocks(grads, p, make_block, BLOCK_ROWS, scale=1.0 / math.sqrt(p))


@hookimpl
def mwga_register_projectors(register):
    register(
        "rademacher",
        RademacherProjector,
        RademacherProjectorConfig,
        description="dense +-1/sqrt(P) JL, streamed",
    )
