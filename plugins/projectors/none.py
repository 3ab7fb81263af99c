"""No projection: features are the gradients themselves (P = D)."""

from __future__ import annotations

from dataclasses import dataclass

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.projectors import Projector, ProjectorConfig


@dataclass
class IdentityProjectorConfig(ProjectorConfig):
    """No fields."""


class IdentityProjector(Projector):
    """Returns its input."""

    def project(self, grads, ctx: RunContext):
        return grads


@hookimpl
def mwga_register_projectors(register):
    register("none", IdentityProjector, IdentityProjectorConfig, description="no projection (P = D)")
