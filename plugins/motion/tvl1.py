"""TV-L1 optical flow (Zach et al. 2007; Wedel et al. 2009) from opencv-contrib's ``cv2.optflow``.

TV-L1 is not in core OpenCV. With ``opencv-python-headless`` alone (mwga's dependency) ``cv2.optflow``
does not exist and building this estimator raises a :class:`MwgaUserError` that says what to install.
opencv-contrib-python-headless *replaces* opencv-python-headless (both install the ``cv2`` module), so
uninstall the one before installing the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError, MwgaUserError
from mwga_core.api.motion import MotionConfig, MotionEstimator, flow_of_uint8_pairs, to_uint8

INSTALL_HINT = (
    "motion=tvl1 needs OpenCV's contrib modules (cv2.optflow), which this OpenCV build lacks: "
    "run `pip uninstall opencv-python-headless && pip install opencv-contrib-python-headless` "
    "(same version), or choose motion=farneback or motion=dis."
)


@dataclass
class Tvl1Config(MotionConfig):
    """``cv2.optflow.DualTVL1OpticalFlow_create`` parameters; defaults are OpenCV's."""

    #: time step of the numerical scheme
    tau: float = 0.25
    #: weight of the data term (larger = less smoothing)
    lambda_: float = 0.15
    #: coupling between the data and smoothness terms
    theta: float = 0.3
    #: pyramid levels
    nscales: int = 5
    #: warpings per pyramid level
    warps: int = 5
    #: stopping threshold of the inner iterations
    epsilon: float = 0.01
    #: inner iterations per warping
    inner_iterations: int = 30
    #: outer iterations per warping
    outer_iterations: int = 10
    #: downscaling factor between pyramid levels
    scale_step: float = 0.8
    #: weight of the illumination-change term (0 = none)
    gamma: float = 0.0
    #: median filter size applied to the flow (odd; 1 = none)
    median_filtering: int = 5


def opencv_has_tvl1() -> bool:
    """True when the installed OpenCV has the contrib ``optflow`` module."""
    import cv2

    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


class Tvl1Flow(MotionEstimator):
    """Dual TV-L1 flow on 8-bit grey frames."""

    def __init__(self, config: Tvl1Config) -> None:
        super().__init__(config)
        c = config
        positive = {
            "tau": c.tau,
            "lambda_": c.lambda_,
            "theta": c.theta,
            "epsilon": c.epsilon,
        }
        for field_name, value in positive.items():
            if value <= 0:
                raise ConfigValueError(field_name, value, "a number > 0")
        for field_name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            value = getattr(c, field_name)
            if value < 1:
                raise ConfigValueError(field_name, value, "an integer >= 1")
        if not 0.0 < c.scale_step < 1.0:
            raise ConfigValueError("scale_step", c.scale_step, "a number in (0, 1)")
        if c.gamma < 0:
            raise ConfigValueError("gamma", c.gamma, "a number >= 0")
        if c.median_filtering < 1 or c.median_filtering % 2 == 0:
            raise ConfigValueError("median_filtering", c.median_filtering, "an odd integer >= 1")
        if not opencv_has_tvl1():
            raise MwgaUserError(INSTALL_HINT)

    def make_opencv_estimator(self):
        """A configured ``cv2.optflow.DualTVL1OpticalFlow``."""
        import cv2

        c = self.config
        return cv2.optflow.DualTVL1OpticalFlow_create(
            tau=c.tau,
            lambda_=c.lambda_,
            theta=c.theta,
            nscales=c.nscales,
            warps=c.warps,
            epsilon=c.epsilon,
            innnerIterations=c.inner_iterations,  # sic: OpenCV's keyword has three n's
            outerIterations=c.outer_iterations,
            scaleStep=c.scale_step,
            gamma=c.gamma,
            medianFiltering=c.median_filtering,
            useInitialFlow=False,
        )

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        return self.make_opencv_estimator().calc(to_uint8(previous), to_uint8(following), None)

    def estimate(self, frames: np.ndarray, ctx: RunContext) -> np.ndarray:
        tvl1 = self.make_opencv_estimator()
        return flow_of_uint8_pairs(frames, ctx, "TV-L1", lambda a, b: tvl1.calc(a, b, None))


@hookimpl
def mwga_register_motion_estimators(register):
    register("tvl1", Tvl1Flow, Tvl1Config, description="TV-L1 flow (needs opencv-contrib)")
