"""Farnebäck dense optical flow (OpenCV), with every ``cv2.calcOpticalFlowFarneback`` parameter in config."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.motion import MotionConfig, MotionEstimator, flow_of_uint8_pairs, to_uint8
from mwga_core.config.checks import above, at_least, one_of, satisfies


@dataclass
class FarnebackConfig(MotionConfig):
    """OpenCV's parameters; defaults are the common ones (see docs/reference.md)."""

    pyr_scale: float = field(default=0.5, metadata=satisfies(lambda v: 0.0 < v < 1.0, "a number in (0, 1)"))
    levels: int = field(default=3, metadata=at_least(1))
    winsize: int = field(default=15, metadata=at_least(3))
    iterations: int = field(default=3, metadata=at_least(1))
    poly_n: int = field(default=5, metadata=one_of(5, 7))
    poly_sigma: float = field(default=1.2, metadata=above(0))
    #: use a Gaussian window instead of a box filter (cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    gaussian_window: bool = False


class FarnebackFlow(MotionEstimator):
    """Farnebäck's polynomial-expansion flow on 8-bit grey frames."""

    def __init__(self, config: FarnebackConfig) -> None:
        super().__init__(config)  # checks the ranges FarnebackConfig declares

    def _flags(self) -> int:
        import cv2

        return cv2.OPTFLOW_FARNEBACK_GAUSSIAN if self.config.gaussian_window else 0

    def _flow(self, previous: np.ndarray, following: np.ndarray, flags: int) -> np.ndarray:
        import cv2

        c = self.config
        return cv2.calcOpticalFlowFarneback(
            previous,
            following,
            None,
            c.pyr_scale,
            c.levels,
            c.winsize,
            c.iterations,
            c.poly_n,
            c.poly_sigma,
            flags,
        )

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        return self._flow(to_uint8(previous), to_uint8(following), self._flags())

    def estimate(self, frames: np.ndarray, ctx: RunContext) -> np.ndarray:
        flags = self._flags()
        return flow_of_uint8_pairs(frames, ctx, "Farnebäck", lambda a, b: self._flow(a, b, flags))


@hookimpl
def mwga_register_motion_estimators(register):
    register("farneback", FarnebackFlow, FarnebackConfig, description="OpenCV Farnebäck dense flow")
