"""No gradient: the descriptor itself is the feature (descriptor-only baselines)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource


@dataclass
class DescriptorAsGradientConfig(GradientConfig):
    """No fields."""


class DescriptorAsGradient(GradientSource):
    """Passes each clip's descriptor through unchanged, as a (1, N, B) 'gradient'."""

    def iter_gradients(self, clips: AnalysedClips, ctx: RunContext) -> Iterator[GradientChunk]:
        import torch

        yield GradientChunk(
            indices=np.arange(len(clips)),
            grads=torch.from_numpy(np.ascontiguousarray(clips.descriptors))[None],
        )


@hookimpl
def mwga_register_gradient_sources(register):
    register(
        "none", DescriptorAsGradient, DescriptorAsGradientConfig, description="the descriptor is the feature"
    )
