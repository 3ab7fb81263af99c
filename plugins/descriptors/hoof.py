"""HOOF exactly as the paper defines it (eq. 2): B magnitude-weighted orientation bins over [0, 2pi).

For every frame pair, each pixel adds its flow magnitude ``||F(i, j)||`` to the bin of its angle
``atan2(dy, dx) mod 2pi`` (image coordinates: y points down, so angle pi/2 is downward motion). The
clip descriptor is the mean of the per-pair histograms, normalised (L1 by default, so it sums to 1).
A static clip (no flow at all) gets the zero vector instead of a division by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig
from mwga_core.config.checks import at_least, one_of

NORMALISATIONS = ("l1", "l2", "none")
#: directions within this many bin widths of a bin edge count as on the edge (float32 flow rounding)
EDGE_TOLERANCE = 1e-6


@dataclass
class HoofConfig(DescriptorConfig):
    """The paper's default is B = 8."""

    bins: int = field(default=8, metadata=at_least(1))
    #: normalisation of the clip descriptor: l1 (sums to 1), l2 (unit length) or none
    normalize: str = field(default="l1", metadata=one_of(*NORMALISATIONS))


def hoof_histograms(flows: np.ndarray, bins: int) -> np.ndarray:
    """Per-frame-pair HOOF of eq. 2.

    Shape:
        flows: (..., H, W, 2) float32.
        returns: (..., bins) float64, un-normalised (the sum of magnitudes per bin).
    """
    lead = flows.shape[:-3]
    flat = flows.reshape(-1, flows.shape[-3] * flows.shape[-2], 2).astype(np.float64)
    magnitude = np.hypot(flat[..., 0], flat[..., 1])
    angle = np.mod(np.arctan2(flat[..., 1], flat[..., 0]), 2 * math.pi)
    position = angle * (bins / (2 * math.pi))
    # A direction exactly on a bin edge (a diagonal of ground-truth flow, say) can come out of atan2 a
    # rounding error below the edge; snap it onto the edge so every bin is [lo, hi) as in eq. 2.
    nearest = np.rint(position)
    position = np.where(np.abs(position - nearest) < EDGE_TOLERANCE, nearest, position)
    index = position.astype(np.int64) % bins  # position == bins is angle 2pi, i.e. bin 0
    index += (np.arange(flat.shape[0]) * bins)[:, None]  # one block of bins per frame pair
    counts = np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=flat.shape[0] * bins)
    return counts.reshape(*lead, bins)


def normalise_rows(vectors: np.ndarray, how: str) -> np.ndarray:
    """Normalise each row by its L1 or L2 norm; rows of norm 0 stay 0."""
    if how == "none":
        return vectors
    norms = (
        np.abs(vectors).sum(axis=-1, keepdims=True)
        if how == "l1"
        else np.linalg.norm(vectors, axis=-1, keepdims=True)
    )
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class HoofDescriptor(Descriptor):
    """Histogram of Oriented Optical Flow, full-circle binning, averaged over frame pairs."""

    def __init__(self, config: HoofConfig) -> None:
        super().__init__(config)  # checks the ranges HoofConfig declares

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        per_pair = hoof_histograms(flows, self.config.bins)  # (N, T-1, B)
        clip = per_pair.mean(axis=1)
        return normalise_rows(clip, self.config.normalize).astype(np.float32)


@hookimpl
def mwga_register_descriptors(register):
    register("hoof", HoofDescriptor, HoofConfig, description="the paper's HOOF: B bins over [0, 2pi)")
