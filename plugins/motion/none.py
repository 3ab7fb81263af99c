"""The absent motion estimator, for methods that never look at motion (appearance-only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.motion import MotionConfig, MotionEstimator


@dataclass
class NoMotionConfig(MotionConfig):
    """No fields."""


class NoMotion(MotionEstimator):
    """Computes no flow; a descriptor that needs flow refuses to run after it."""

    produces_flow = False

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        raise RuntimeError("motion=none computes no flow")


@hookimpl
def mwga_register_motion_estimators(register):
    register("none", NoMotion, NoMotionConfig, description="no flow (appearance-only methods)")
