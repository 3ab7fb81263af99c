"""The appearance-only baseline's descriptor: what a clip looks like, with no motion at all.

Definition: the clip's temporal mean frame (mean over T of the pixel intensities), flattened to H*W*C
values, minus its own mean so that cosine similarity compares texture rather than overall brightness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig


@dataclass
class AppearanceConfig(DescriptorConfig):
    """No fields."""


class AppearanceDescriptor(Descriptor):
    """Temporal mean frame, mean-centred. Reads frames only."""

    needs_flow = False

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        mean_frame = frames.mean(axis=1).reshape(frames.shape[0], -1)
        return (mean_frame - mean_frame.mean(axis=1, keepdims=True)).astype(np.float32)


@hookimpl
def mwga_register_descriptors(register):
    register(
        "appearance",
        AppearanceDescriptor,
        AppearanceConfig,
        description="mean frame, mean-centred (baseline)",
    )
