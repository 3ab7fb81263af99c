"""Farnebäck dense optical flow (OpenCV), with every ``cv2.calcOpticalFlowFarneback`` parameter in config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.motion import MotionConfig, MotionEstimator, flow_of_uint8_pairs, to_uint8


@dataclass
class FarnebackConfig(MotionConfig):
    """OpenCV's parameters; defaults are the common ones (see docs/reference.md)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    #: use a Gaussian window instead of a box filter (cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    gaussian_window: bool = False


class FarnebackFlow(MotionEstimator):
    """Farnebäck's polynomial-expansion flow on 8-bit grey frames."""

    def __init__(self, config: FarnebackConfig) -> None:
        super().__init__(config)
        c = config
        if not 0.0 < c.pyr_scale < 1.0:
            raise ConfigValueError("pyr_scale", c.pyr_scale, "a number in (0, 1)")
        if c.levels < 1:
            raise ConfigValueError("levels", c.levels, "an integer >= 1")
        if c.winsize < 3:
            raise ConfigValueError("winsize", c.winsize, "an integer >= 3")
        if c.iterations < 1:
            raise ConfigValueError("iterations", c.iterations, "an integer >= 1")
        if c.poly_n not in (5, 7):
            raise ConfigValueError("poly_n", c.poly_n, "5 or 7")
        if c.poly_sigma <= 0:
            raise ConfigValueError("poly_sigma", c.poly_sigma, "a number > 0")

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
