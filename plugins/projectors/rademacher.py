"""Dense Rademacher Johnson-Lindenstrauss projection (+-1/sqrt(P) entries), streamed block by block.

The implementation is shared with ``gaussian``: :mod:`mwga_plugins.projectors.dense_jl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mwga_plugins.projectors.dense_jl import DenseJLProjector

from mwga_core import hookimpl
from mwga_core.api.projectors import ProjectorConfig
from mwga_core.config.checks import at_least


@dataclass
class RademacherProjectorConfig(ProjectorConfig):
    """P, the number of output dimensions."""

    dim: int = field(default=128, metadata=at_least(1))


class RademacherProjector(DenseJLProjector):
    """x -> x W with W_ij = +-1/sqrt(P), W regenerated block by block from seeds."""

    distribution = "rademacher"


@hookimpl
def mwga_register_projectors(register):
    register(
        "rademacher",
        RademacherProjector,
        RademacherProjectorConfig,
        description="dense +-1/sqrt(P) JL, streamed",
    )
