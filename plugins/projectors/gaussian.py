"""Dense Gaussian Johnson-Lindenstrauss projection (N(0, 1/P) entries), streamed block by block.

The implementation is shared with ``rademacher``: :mod:`mwga_plugins.projectors.dense_jl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mwga_plugins.projectors.dense_jl import DenseJLProjector

from mwga_core import hookimpl
from mwga_core.api.projectors import ProjectorConfig
from mwga_core.config.checks import at_least


@dataclass
class GaussianProjectorConfig(ProjectorConfig):
    """The paper's default P = 128."""

    dim: int = field(default=128, metadata=at_least(1))


class GaussianProjector(DenseJLProjector):
    """x -> x W with W ~ N(0, 1/P), W regenerated block by block from seeds."""

    distribution = "gaussian"


@hookimpl
def mwga_register_projectors(register):
    register(
        "gaussian", GaussianProjector, GaussianProjectorConfig, description="dense Gaussian JL, streamed"
    )
