"""Descriptors: one vector per clip summarising its motion (or, for baselines, its appearance).

Built-in implementations (``plugins/descriptors``):
    hoof: the paper's Histogram of Oriented Optical Flow, B bins over [0, 2pi).
    appearance: the clip's mean frame (the appearance-only baseline).
    flow_magnitude: the mean flow-magnitude map, no direction (the flow-magnitude baseline).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig


@dataclass
class DescriptorConfig(ComponentConfig):
    """Base config for descriptors."""


class Descriptor(ABC):
    """Clips (and their flow) to descriptors. A static clip must give a finite vector, never NaN."""

    needs_flow: ClassVar[bool] = True

    def __init__(self, config: DescriptorConfig) -> None:
        check_fields(config)  # the ranges the config dataclass declares (mwga_core/config/checks.py)
        self.config = config

    @abstractmethod
    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        """Describe every clip.

        Shape:
            frames: (N, T, H, W, C) float32 in [0, 1].
            flows: (N, T-1, H, W, 2) float32, or None when ``needs_flow`` is False.
            returns: (N, B) float32, finite.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
