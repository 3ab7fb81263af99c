"""DIS optical flow (Kroeger et al., ECCV 2016): OpenCV's Dense Inverse Search, a preset plus overrides.

``preset`` picks OpenCV's ultrafast, fast or medium parameter set; every other field, when set, overrides
one parameter of that preset (``None`` keeps the preset's value). DIS is part of core OpenCV.

The presets compute flow down to the image scale ``2 ** -finest_scale``: ultrafast and fast stop at 1/4
resolution (finest_scale 2), medium at 1/2 (finest_scale 1), and upsample from there. OpenCV lowers the
finest scale to the coarsest one the frame allows (about ``log2(side / (4 * patch_size))``), so on the
benchmark's 32x32 frames with 8-px patches every preset computes flow at full resolution and the presets
differ only in their iterations and refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.motion import MotionConfig, MotionEstimator, flow_of_uint8_pairs, to_uint8

PRESETS = ("ultrafast", "fast", "medium")

#: config field -> the setter of cv2.DISOpticalFlow it overrides
OVERRIDE_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "variational_refinement_alpha": "setVariationalRefinementAlpha",
    "variational_refinement_delta": "setVariationalRefinementDelta",
    "variational_refinement_gamma": "setVariationalRefinementGamma",
    "use_mean_normalization": "setUseMeanNormalization",
    "use_spatial_propagation": "setUseSpatialPropagation",
}


@dataclass
class DisConfig(MotionConfig):
    """A preset and optional overrides of its parameters (None = the preset's value)."""

    #: OpenCV parameter set: ultrafast, fast or medium
    preset: str = "medium"
    #: finest pyramid level computed (0 = full resolution)
    finest_scale: int | None = None
    #: side of the square patches matched, in pixels
    patch_size: int | None = None
    #: step between neighbouring patches, in pixels (< patch_size)
    patch_stride: int | None = None
    #: inverse-search iterations per patch
    gradient_descent_iterations: int | None = None
    #: variational refinement iterations per level (0 = none)
    variational_refinement_iterations: int | None = None
    #: smoothness weight of the variational refinement
    variational_refinement_alpha: float | None = None
    #: colour-constancy weight of the variational refinement
    variational_refinement_delta: float | None = None
    #: gradient-constancy weight of the variational refinement
    variational_refinement_gamma: float | None = None
    #: normalise patch means (robustness to brightness changes)
    use_mean_normalization: bool | None = None
    #: propagate good patch flows to neighbours
    use_spatial_propagation: bool | None = None


class DisFlow(MotionEstimator):
    """OpenCV's DIS flow on 8-bit grey frames."""

    def __init__(self, config: DisConfig) -> None:
        super().__init__(config)
        c = config
        if c.preset not in PRESETS:
            raise ConfigValueError("preset", c.preset, f"one of {list(PRESETS)}")
        at_least = {
            "finest_scale": 0,
            "patch_size": 1,
            "patch_stride": 1,
            "gradient_descent_iterations": 1,
            "variational_refinement_iterations": 0,
        }
        for field_name, low in at_least.items():
            value = getattr(c, field_name)
            if value is not None and value < low:
                raise ConfigValueError(
                    field_name, value, f"an integer >= {low}, or null for the preset's value"
                )
        for field_name in ("variational_refinement_alpha", "variational_refinement_delta"):
            value = getattr(c, field_name)
            if value is not None and value < 0:
                raise ConfigValueError(field_name, value, "a number >= 0, or null for the preset's value")
        if c.variational_refinement_gamma is not None and c.variational_refinement_gamma < 0:
            raise ConfigValueError(
                "variational_refinement_gamma",
                c.variational_refinement_gamma,
                "a number >= 0, or null for the preset's value",
            )
        if c.patch_size is not None and c.patch_stride is not None and c.patch_stride >= c.patch_size:
            raise ConfigValueError(
                "patch_stride", c.patch_stride, f"an integer < patch_size ({c.patch_size})"
            )

    def make_opencv_estimator(self):
        """A configured ``cv2.DISOpticalFlow`` (made per call: OpenCV objects do not pickle)."""
        import cv2

        preset = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[self.config.preset]
        dis = cv2.DISOpticalFlow_create(preset)
        for field_name, setter in OVERRIDE_SETTERS.items():
            value = getattr(self.config, field_name)
            if value is not None:
                getattr(dis, setter)(value)
        return dis

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        return self.make_opencv_estimator().calc(to_uint8(previous), to_uint8(following), None)

    def estimate(self, frames: np.ndarray, ctx: RunContext) -> np.ndarray:
        dis = self.make_opencv_estimator()
        return flow_of_uint8_pairs(
            frames, ctx, f"DIS {self.config.preset}", lambda a, b: dis.calc(a, b, None)
        )


@hookimpl
def mwga_register_motion_estimators(register):
    register("dis", DisFlow, DisConfig, description="OpenCV DIS flow (ultrafast/fast/medium presets)")
