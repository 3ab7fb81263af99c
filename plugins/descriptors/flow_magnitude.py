"""The flow-magnitude baseline's descriptor: how much each pixel moves, never in which direction.

Definition: the per-pixel flow magnitude ``||F_t(i, j)||`` averaged over the T-1 frame pairs, flattened
to H*W values. Uniform motions (pan, tilt, slide, random jitter) give flat maps scaled by their speed;
zoom and rotation give maps growing with the distance from the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig


@dataclass
class FlowMagnitudeConfig(DescriptorConfig):
    """No fields."""


class FlowMagnitudeDescriptor(Descriptor):
    """Mean flow-magnitude map over frame pairs."""

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        magnitude = np.hypot(flows[..., 0], flows[..., 1]).mean(axis=1)
        return magnitude.reshape(magnitude.shape[0], -1).astype(np.float32)


@hookimpl
def mwga_register_descriptors(register):
    register(
        "flow_magnitude",
        FlowMagnitudeDescriptor,
        FlowMagnitudeConfig,
        description="mean flow-magnitude map, no direction (baseline)",
    )
