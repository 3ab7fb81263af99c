"""Projectors: seeded random maps from gradient space (D dims) to feature space (P dims).

Built-in implementations (``plugins/projectors``):
    gaussian: dense Gaussian JL matrix, generated block by block so it never exists whole.
    identity: no projection (P = D).

A projector is a pure function of (seed, D, P): training and query gradients projected in different
calls, processes or runs land in the same space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mwga_core.context import RunContext
from mwga_core.registry import ComponentConfig

if TYPE_CHECKING:
    import torch


@dataclass
class ProjectorConfig(ComponentConfig):
    """Base config for projectors."""


class Projector(ABC):
    """Project gradients; the same (ctx.seed, D) must always give the same map."""

    def __init__(self, config: ProjectorConfig) -> None:
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
