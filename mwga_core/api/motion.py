"""Motion estimators: dense optical flow between consecutive frames.

Built-in implementations (``plugins/motion``):
    farneback: OpenCV's Farnebäck polynomial-expansion flow, every parameter in config.
    none: no flow; for methods that score appearance only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig


@dataclass
class MotionConfig(ComponentConfig):
    """Base config for motion estimators."""


def to_grey(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, C) float in [0, 1] -> (..., H, W) float32 luminance (ITU-R BT.601 weights)."""
    if frames.shape[-1] == 1:
        return frames[..., 0].astype(np.float32, copy=False)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (frames.astype(np.float32) @ weights).astype(np.float32)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounded; OpenCV's flow functions take 8-bit grey images."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def flow_of_uint8_pairs(
    frames: np.ndarray,
    ctx: RunContext,
    label: str,
    pair_flow: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Every consecutive pair's flow for an OpenCV-style estimator: 8-bit grey conversion once, then a tight loop.

    Shape:
        frames: (N, T, H, W, C) float32 in [0, 1].
        pair_flow: (H, W) uint8, (H, W) uint8 -> (H, W, 2) float32.
        returns: (N, T-1, H, W, 2) float32.
    """
    grey = to_uint8(to_grey(frames))
    n, t, h, w = grey.shape
    flows = np.empty((n, t - 1, h, w, 2), dtype=np.float32)
    with ctx.progress(f"flow ({label})", n) as bar:
        for i in range(n):
            for j in range(t - 1):
                flows[i, j] = pair_flow(grey[i, j], grey[i, j + 1])
            bar.advance()
    return flows


class MotionEstimator(ABC):
    """Frames to flow. Subclasses implement :meth:`estimate_pair`, or override :meth:`estimate` to batch."""

    produces_flow: ClassVar[bool] = True

    def __init__(self, config: MotionConfig) -> None:
        check_fields(config)  # the ranges the config dataclass declares (mwga_core/config/checks.py)
        self.config = config

    @abstractmethod
    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        """Flow from one grey frame to the next.

        Shape:
            previous, following: (H, W) float32 in [0, 1].
            returns: (H, W, 2) float32, ``(dx, dy)`` per pixel.
        """

    def estimate(self, frames: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Flow of every consecutive frame pair of every clip.

        Shape:
            frames: (N, T, H, W, C) float32 in [0, 1].
            returns: (N, T-1, H, W, 2) float32.
        """
        grey = to_grey(frames)
        n, t, h, w = grey.shape
        flows = np.empty((n, t - 1, h, w, 2), dtype=np.float32)
        with ctx.progress(f"flow ({type(self).__name__})", n) as bar:
            for i in range(n):
                for j in range(t - 1):
                    flows[i, j] = self.estimate_pair(grey[i, j], grey[i, j + 1])
                bar.advance()
        return flows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
