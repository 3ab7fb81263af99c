"""The affine-motion descriptor: a least-squares affine fit of every flow field, averaged over frame pairs.

Each frame pair's flow is fitted, in the least-squares sense over all pixels, by

    u = a0 + a1 x + a2 y,    v = b0 + b1 x + b2 y

with ``(x, y)`` measured from the image centre ``((W-1)/2, (H-1)/2)`` and **y pointing down** (image
rows). The six parameters are re-expressed as the motion's components:

* ``a0``, ``b0``: translation (px per frame pair; ``b0 > 0`` is downward motion);
* divergence ``a1 + b2``: zoom (positive = zoom in / expansion);
* curl ``b1 - a2``: rotation. Because y points down, **positive curl is clockwise on screen**;
  a clockwise rotation by a small angle t gives ``curl = 2 sin t``;
* shear ``a1 - b2`` (stretch along x, squeeze along y) and ``a2 + b1`` (diagonal shear).

With ``coordinates=normalised`` (the default) x and y are divided by the half-width and half-height, so
the four linear terms are the flow they add at the frame's edge in px, commensurable with the
translation. ``coordinates=pixels`` keeps them per pixel. ``pooling=mean`` averages the six numbers over
the frame pairs; ``mean_std`` appends their standard deviations (12 numbers), which tells a steady motion
from one that changes direction every frame. A static clip gives zeros, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig
from mwga_core.api.errors import ConfigValueError

COORDINATES = ("normalised", "pixels")
POOLINGS = ("mean", "mean_std")
NORMALISATIONS = ("none", "l2")
COMPONENTS = ("translation_x", "translation_y", "divergence", "curl", "shear_stretch", "shear_diagonal")


@dataclass
class AffineConfig(DescriptorConfig):
    """How the affine parameters are scaled and pooled."""

    #: normalised: x, y in [-1, 1] (linear terms in px at the frame edge); pixels: x, y in px
    coordinates: str = "normalised"
    #: mean: average over frame pairs (6 numbers); mean_std: also their standard deviations (12)
    pooling: str = "mean"
    #: none, or l2 (unit length)
    normalize: str = "none"


def affine_fit(flows: np.ndarray, coordinates: str = "pixels") -> np.ndarray:
    """Least-squares affine parameters ``(a0, a1, a2, b0, b1, b2)`` of each flow field.

    Shape:
        flows: (..., H, W, 2) float, ``(u, v) = (dx, dy)`` with y pointing down.
        returns: (..., 6) float64.
    """
    h, w = flows.shape[-3:-1]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xs -= (w - 1) / 2.0
    ys -= (h - 1) / 2.0
    if coordinates == "normalised":
        xs /= max((w - 1) / 2.0, 1.0)
        ys /= max((h - 1) / 2.0, 1.0)
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], axis=1)  # (HW, 3)
    solver = np.linalg.pinv(design)  # (3, HW)
    flat = flows.reshape(*flows.shape[:-3], h * w, 2).astype(np.float64)
    u_params = flat[..., 0] @ solver.T  # (..., 3)
    v_params = flat[..., 1] @ solver.T
    return np.concatenate([u_params, v_params], axis=-1)


def motion_components(params: np.ndarray) -> np.ndarray:
    """Affine parameters to (translation x, translation y, divergence, curl, shear stretch, shear diagonal).

    Shape:
        params: (..., 6) as :func:`affine_fit` returns.
        returns: (..., 6).
    """
    a0, a1, a2, b0, b1, b2 = np.moveaxis(params, -1, 0)
    return np.stack([a0, b0, a1 + b2, b1 - a2, a1 - b2, a2 + b1], axis=-1)


class AffineDescriptor(Descriptor):
    """Translation, divergence, curl and shear of the clip's flow, pooled over frame pairs."""

    def __init__(self, config: AffineConfig) -> None:
        super().__init__(config)
        for field_name, value, allowed in (
            ("coordinates", config.coordinates, COORDINATES),
            ("pooling", config.pooling, POOLINGS),
            ("normalize", config.normalize, NORMALISATIONS),
        ):
            if value not in allowed:
                raise ConfigValueError(field_name, value, f"one of {list(allowed)}")

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        per_pair = motion_components(affine_fit(flows, self.config.coordinates))  # (N, P, 6)
        pooled = per_pair.mean(axis=1)
        if self.config.pooling == "mean_std":
            pooled = np.concatenate([pooled, per_pair.std(axis=1)], axis=1)
        if self.config.normalize == "l2":
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)
        return pooled.astype(np.float32)


@hookimpl
def mwga_register_descriptors(register):
    register(
        "affine",
        AffineDescriptor,
        AffineConfig,
        description="least-squares affine flow fit: translation, divergence, curl, shear",
    )
