"""The ``divergence_curl`` descriptor: a least-squares affine fit of every flow field.

For each frame pair the flow ``(u, v)`` is fitted, over all pixels, by an affine field about the image
centre (x to the right, y downwards, in pixels from the centre):

    u = a0 + a1 x + a2 y
    v = b0 + b1 x + b2 y

and summarised by six numbers, averaged over the T-1 frame pairs of the clip:

=================  =============  ==============================================================
component          formula        what moves it
=================  =============  ==============================================================
translation x      a0             pans (px/frame)
translation y      b0             tilts (px/frame)
divergence         a1 + b2        zoom: positive when zooming in
curl               b1 - a2        rotation: positive for clockwise on screen (y points down)
shear (stretch)    a1 - b2        stretching along x against y
shear (skew)       a2 + b1        skew
=================  =============  ==============================================================

With ``scale_to_edge`` the four linear terms are multiplied by the distance from the centre to the
frame edge, so they read in px/frame at the edge, comparable with the translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig


@dataclass
class DivergenceCurlConfig(DescriptorConfig):
    """Which parts of the affine fit make up the descriptor."""

    #: keep the translation (a0, b0); False describes only how the flow varies across the frame
    include_translation: bool = True
    #: keep the two shear terms
    include_shear: bool = True
    #: multiply divergence, curl and shear by the centre-to-edge distance (px/frame at the edge)
    scale_to_edge: bool = True


def affine_flow_fit(flows: np.ndarray) -> np.ndarray:
    """Least-squares affine fit of each flow field about the image centre.

    Shape:
        flows: (..., H, W, 2) float, ``(dx, dy)`` per pixel.
        returns: (..., 6) float64, ``[a0, a1, a2, b0, b1, b2]``.
    """
    height, width = flows.shape[-3], flows.shape[-2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= (width - 1) / 2.0
    ys -= (height - 1) / 2.0
    design = np.stack([np.ones_like(xs), xs, ys], axis=-1).reshape(-1, 3)  # (H*W, 3)
    solver = np.linalg.pinv(design)  # (3, H*W); pinv also covers a 1-pixel-wide frame
    flat = flows.reshape(*flows.shape[:-3], height * width, 2).astype(np.float64)
    coefficients = np.einsum("kp,...pc->...ck", solver, flat)  # (..., 2, 3): rows u and v
    return coefficients.reshape(*flows.shape[:-3], 6)


class DivergenceCurlDescriptor(Descriptor):
    """Translation, divergence, curl and shear of the flow, averaged over frame pairs."""

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        """Describe every clip.

        Shape:
            frames: (N, T, H, W, C) float32 (unused).
            flows: (N, T-1, H, W, 2) float32.
            returns: (N, B) float32 with B = 2 + 2 * include_translation + 2 * include_shear.
        """
        c = self.config
        a0, a1, a2, b0, b1, b2 = np.moveaxis(affine_flow_fit(flows), -1, 0)  # each (N, T-1)
        edge = (max(flows.shape[2], flows.shape[3]) - 1) / 2.0 if c.scale_to_edge else 1.0
        parts = [a0, b0] if c.include_translation else []
        parts += [edge * (a1 + b2), edge * (b1 - a2)]
        if c.include_shear:
            parts += [edge * (a1 - b2), edge * (a2 + b1)]
        per_pair = np.stack(parts, axis=-1)  # (N, T-1, B)
        return per_pair.mean(axis=1).astype(np.float32)
