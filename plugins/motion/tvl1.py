"""TV-L1 optical flow (Zach et al. 2007; Wedel et al. 2009) from opencv-contrib's ``cv2.optflow``.

TV-L1 is not in core OpenCV. With ``opencv-python-headless`` alone (mwga's dependency) ``cv2.optflow``
does not exist and building this estimator raises a :class:`MwgaUserError` that says what to install.
opencv-contrib-python-headless *replaces* opencv-python-headless (both install the ``cv2`` module), so
uninstall the one before installing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import MwgaUserError
from mwga_core.api.motion import MotionConfig, MotionEstimator, flow_of_uint8_pairs, to_uint8
from mwga_core.config.checks import above, at_least, satisfies

INSTALL_HINT = (
    "motion=tvl1 needs OpenCV's contrib modules (cv2.optflow), which this OpenCV build lacks: "
    "run `pip uninstall opencv-python-headless && pip install opencv-contrib-python-headless` "
    "(same version), or choose motion=farneback or motion=dis."
)


@dataclass
class Tvl1Config(MotionConfig):
    """``cv2.optflow.DualTVL1OpticalFlow_create`` parameters; defaults are OpenCV's."""

    #: time step of the numerical scheme
    tau: float = field(default=0.25, metadata=above(0))
    #: weight of the data term (larger = less smoothing)
    lambda_: float = field(default=0.15, metadata=above(0))
    #: coupling between the data and smoothness terms
    theta: float = field(default=0.3, metadata=above(0))
    #: pyramid levels
    nscales: int = field(default=5, metadata=at_least(1))
    #: warpings per pyramid level
    warps: int = field(default=5, metadata=at_least(1))
    #: stopping threshold of the inner iterations
    epsilon: float = field(default=0.01, metadata=above(0))
    #: inner iterations per warping
    inner_iterations: int = field(default=30, metadata=at_least(1))
    #: outer iterations per warping
    outer_iterations: int = field(default=10, metadata=at_least(1))
    #: downscaling factor between pyramid levels
    scale_step: float = field(default=0.8, metadata=satisfies(lambda v: 0.0 < v < 1.0, "a number in (0, 1)"))
    #: weight of the illumination-change term (0 = none)
    gamma: float = field(default=0.0, metadata=at_least(0))
    #: median filter size applied to the flow (odd; 1 = none)
    median_filtering: int = field(
        default=5, metadata=satisfies(lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1")
    )


def opencv_has_tvl1() -> bool:
    """True when the installed OpenCV has the contrib ``optflow`` module."""
    import cv2

    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


class Tvl1Flow(MotionEstimator):
    """Dual TV-L1 flow on 8-bit grey frames."""

    def __init__(self, config: Tvl1Config) -> None:
        super().__init__(config)  # checks the ranges Tvl1Config declares
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
