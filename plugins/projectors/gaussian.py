"""Dense Gaussian Johnson-Lindenstrauss projection, streamed block by block.

The (D, P) matrix has i.i.d. N(0, 1/P) entries, so inner products are preserved in expectation. It is
generated in blocks of ``BLOCK_ROWS`` rows, each from its own seed derived from (run seed, D, P, block),
so the full matrix never exists in memory and every call, process or run sees the same matrix.
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
class GaussianProjectorConfig(ProjectorConfig):
    """The paper's default P = 128."""

    dim: int = 128


class GaussianProjector(Projector):
    """x -> x W with W ~ N(0, 1/P), W regenerated block by block from seeds."""

    def __init__(self, config: GaussianProjectorConfig) -> None:
        super().__init__(config)
        if config.dim < 1:
            raise ConfigValueError("dim", config.dim, "an integer >= 1")

    def project(self, grads, ctx: RunContext):
        import torch

        d, p = grads.shape[1], self.config.dim

        def make_block(block: int, rows: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(ctx.seed_for("gaussian-projection", d, p, block))
            return torch.randn((rows, p), generator=generator, dtype=torch.float32)

        return project_by_row_blocks(grads, p, make_block, BLOCK_ROWS, scale=1.0 / math.sqrt(p))


@hookimpl
def mwga_register_projectors(register):
    register(
        "gaussian", GaussianProjector, GaussianProjectorConfig, description="dense Gaussian JL, streamed"
    )
