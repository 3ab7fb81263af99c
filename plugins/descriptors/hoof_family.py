"""The HOOF family: variants of the Histogram of Oriented Optical Flow, one configurable descriptor.

Every option below is the same :class:`HoofVariantDescriptor` with different defaults, so any option can
switch on any other variant's fields (``descriptor=hoof_grid descriptor.assignment=soft``):

``hoof_mirror``
    Chaudhry et al. (CVPR 2009): the angle is measured from the horizontal axis and folded so that a
    motion and its left-right mirror share a bin, ``theta = atan2(dy, |dx|)`` in ``[-pi/2, pi/2]``;
    bins split that half circle evenly. ``+x`` and ``-x`` motion land in the same bin.
``hoof_soft``
    full circle ``[0, 2pi)`` like the paper's ``hoof``, but each pixel's weight is split linearly
    between the two bins whose centres surround its angle (no jump at bin edges).
``hoof_static``
    full circle with an extra first bin for static pixels (``|flow| < static_threshold`` px).
``hoof_grid``
    the frame cut into ``grid x grid`` cells, one HOOF per cell, concatenated (row-major, top-left
    first). A 2x2 grid separates zoom from rotation; a global HOOF cannot (both spread over all angles).
``hoof_pyramid``
    a temporal pyramid: level ``l`` splits the frame pairs into ``2**l`` consecutive segments, one HOOF
    per segment; levels ``0 .. pyramid_levels-1`` are concatenated (1 + 2 + 4 + ... segments).
``hoof_orientation_magnitude``
    a joint histogram: ``bins`` orientations x ``len(magnitude_edges) + 1`` speed ranges.

Pooling and normalisation. The descriptor is a concatenation of *blocks*, one per (temporal segment,
spatial cell). Within a block, without a static bin, the per-pair histograms are averaged over the pairs
of the segment and L1-normalised (the paper's rule). With a static bin, each pair's block is
``[s, (1 - s) * h]``, ``s`` the fraction of static pixels and ``h`` the L1-normalised histogram of the
moving pixels, and the block is the mean of those over the pairs; a fully static pair is ``[1, 0, ...]``.
Finally the whole vector is normalised as ``normalize`` says (L1: every block then weighs the same).
A block without any motion (and no static bin) stays zero: static clips give finite vectors, never NaN.

Angles use image coordinates (y points down): in the full circle, angle pi/2 is downward motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mwga_plugins.descriptors.hoof import NORMALISATIONS, normalise_rows

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor, DescriptorConfig
from mwga_core.api.errors import ConfigValueError

ORIENTATIONS = ("full", "mirror")
ASSIGNMENTS = ("hard", "soft")
WEIGHTS = ("magnitude", "count")
#: directions within this many bin widths of a bin edge count as on the edge (float32 flow rounding)
EDGE_TOLERANCE = 1e-6


@dataclass
class HoofVariantConfig(DescriptorConfig):
    """Every HOOF variant's switches; each registered option only changes the defaults."""

    #: orientation bins
    bins: int = 8
    #: full: atan2(dy, dx) in [0, 2pi) (the paper); mirror: atan2(dy, |dx|) in [-pi/2, pi/2] (Chaudhry)
    orientation: str = "full"
    #: hard: one bin per pixel; soft: split linearly between the two nearest bin centres
    assignment: str = "hard"
    #: what a pixel adds: its flow magnitude (HOOF) or 1 (a plain orientation count)
    weight: str = "magnitude"
    #: pixels moving less than this (px per frame pair) go to an extra static bin; 0 = no static bin
    static_threshold: float = 0.0
    #: spatial cells per side (1 = one global histogram)
    grid: int = 1
    #: temporal pyramid levels (1 = one histogram for the whole clip)
    pyramid_levels: int = 1
    #: speed-range edges in px per frame pair; empty = no magnitude bins
    magnitude_edges: list[float] = field(default_factory=list)
    #: normalisation of the whole descriptor: l1 (sums to 1), l2 (unit length) or none
    normalize: str = "l1"


@dataclass
class MirrorHoofConfig(HoofVariantConfig):
    """Chaudhry's original HOOF: mirror-symmetric orientation bins."""

    orientation: str = "mirror"


@dataclass
class SoftHoofConfig(HoofVariantConfig):
    """Soft assignment between neighbouring bins."""

    assignment: str = "soft"


@dataclass
class StaticBinHoofConfig(HoofVariantConfig):
    """An extra bin for pixels moving less than 0.1 px per frame pair."""

    static_threshold: float = 0.1


@dataclass
class GridHoofConfig(HoofVariantConfig):
    """A 2x2 spatial grid of HOOFs."""

    grid: int = 2


@dataclass
class PyramidHoofConfig(HoofVariantConfig):
    """A 3-level temporal pyramid (1 + 2 + 4 segments)."""

    pyramid_levels: int = 3


@dataclass
class OrientationMagnitudeHoofConfig(HoofVariantConfig):
    """8 orientations x 4 speed ranges (< 0.5, 0.5-1, 1-1.5, >= 1.5 px per frame pair)."""

    magnitude_edges: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5])


def orientation_bin_weights(
    dx: np.ndarray, dy: np.ndarray, bins: int, orientation: str, assignment: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which orientation bins each flow vector falls in, and with what share.

    Returns ``(lower, upper, lower_share, upper_share)``; hard assignment gives ``upper == lower`` and
    ``upper_share == 0``.

    Shape:
        dx, dy: (...) float64.
        returns: four arrays of shape (...): int64, int64, float64, float64.
    """
    if orientation == "mirror":
        angle = np.arctan2(dy, np.abs(dx)) + math.pi / 2  # [0, pi]
        span, circular = math.pi, False
    else:
        angle = np.mod(np.arctan2(dy, dx), 2 * math.pi)
        span, circular = 2 * math.pi, True
    position = angle * (bins / span)
    if assignment == "hard":
        # A direction exactly on a bin edge (a diagonal of ground-truth flow, say) can come out of atan2
        # a rounding error below it; snap it onto the edge so every bin is [lo, hi), as hoof.py does.
        nearest = np.rint(position)
        position = np.where(np.abs(position - nearest) < EDGE_TOLERANCE, nearest, position)
        lower = position.astype(np.int64)
        # Full circle: position == bins is angle 2pi, bin 0. Mirror: it is straight down, the last bin.
        lower = np.mod(lower, bins) if circular else np.minimum(lower, bins - 1)
        return lower, lower, np.ones_like(position), np.zeros_like(position)
    centred = position - 0.5  # bin b's centre sits at position b + 0.5
    lower = np.floor(centred).astype(np.int64)
    upper_share = centred - lower
    upper = lower + 1
    if circular:
        lower, upper = np.mod(lower, bins), np.mod(upper, bins)
    else:
        # The half circle's ends (straight up, straight down) are not neighbours: clamp, keep all weight.
        below, above = lower < 0, upper > bins - 1
        upper_share = np.where(below, 1.0, np.where(above, 0.0, upper_share))
        lower, upper = np.clip(lower, 0, bins - 1), np.clip(upper, 0, bins - 1)
    return lower, upper, 1.0 - upper_share, upper_share


class HoofVariantDescriptor(Descriptor):
    """HOOF with mirror/full orientation, hard/soft assignment, static bin, grid, pyramid, speed bins."""

    def __init__(self, config: HoofVariantConfig) -> None:
        super().__init__(config)
        c = config
        if c.bins < 1:
            raise ConfigValueError("bins", c.bins, "an integer >= 1")
        for field_name, value, allowed in (
            ("orientation", c.orientation, ORIENTATIONS),
            ("assignment", c.assignment, ASSIGNMENTS),
            ("weight", c.weight, WEIGHTS),
            ("normalize", c.normalize, NORMALISATIONS),
        ):
            if value not in allowed:
                raise ConfigValueError(field_name, value, f"one of {list(allowed)}")
        if c.static_threshold < 0:
            raise ConfigValueError(
                "static_threshold", c.static_threshold, "a number >= 0 (0 = no static bin)"
            )
        if c.grid < 1:
            raise ConfigValueError("grid", c.grid, "an integer >= 1")
        if c.pyramid_levels < 1:
            raise ConfigValueError("pyramid_levels", c.pyramid_levels, "an integer >= 1")
        edges = list(c.magnitude_edges)
        if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigValueError(
                "magnitude_edges", edges, "strictly increasing speeds > 0 in px per frame pair (or [])"
            )

    @property
    def block_size(self) -> int:
        """Bins per (segment, cell) block: orientations x speed ranges, plus the static bin."""
        c = self.config
        return c.bins * (len(c.magnitude_edges) + 1) + (1 if c.static_threshold > 0 else 0)

    def dimension(self, num_pairs: int) -> int:
        """Length of the descriptor for clips of ``num_pairs`` frame pairs."""
        return (
            self.block_size
            * self.config.grid**2
            * len(pyramid_segments(num_pairs, self.config.pyramid_levels))
        )

    def pair_histograms(self, flows: np.ndarray) -> np.ndarray:
        """Un-pooled histograms of every frame pair and cell.

        Shape:
            flows: (N, P, H, W, 2) float32, P frame pairs.
            returns: (N, P, grid*grid, block_size) float64. Without a static bin: sums of weights per bin.
            With one: each (pair, cell) row already is ``[s, (1 - s) * h]`` and sums to 1.
        """
        c = self.config
        n, p, h, w, _ = flows.shape
        if c.grid > min(h, w):
            # Raised while describing, after the core's group prefixing: name the full path here.
            raise ConfigValueError("descriptor.grid", c.grid, f"at most the frame side ({min(h, w)} px)")
        flat = flows.astype(np.float64)
        dx, dy = flat[..., 0], flat[..., 1]
        magnitude = np.hypot(dx, dy)
        lower, upper, lower_share, upper_share = orientation_bin_weights(
            dx, dy, c.bins, c.orientation, c.assignment
        )
        speed_bins = len(c.magnitude_edges) + 1
        if speed_bins > 1:
            speed = np.searchsorted(np.asarray(c.magnitude_edges, dtype=np.float64), magnitude, side="right")
            lower, upper = lower * speed_bins + speed, upper * speed_bins + speed
        weight = magnitude if c.weight == "magnitude" else np.ones_like(magnitude)
        has_static_bin = c.static_threshold > 0
        moving = magnitude >= c.static_threshold if has_static_bin else np.ones(magnitude.shape, dtype=bool)
        weight = np.where(moving, weight, 0.0)

        # Each pixel's cell (row-major over the grid), then one block of bins per (clip, pair, cell).
        cell_rows = (np.arange(h) * c.grid) // h
        cell_cols = (np.arange(w) * c.grid) // w
        cell = (cell_rows[:, None] * c.grid + cell_cols[None, :]).astype(np.int64)
        cells = c.grid**2
        orientation_bins = c.bins * speed_bins
        block = (np.arange(n * p, dtype=np.int64).reshape(n, p, 1, 1) * cells + cell) * orientation_bins
        total = n * p * cells * orientation_bins
        counts = np.bincount((block + lower).ravel(), weights=(weight * lower_share).ravel(), minlength=total)
        counts += np.bincount(
            (block + upper).ravel(), weights=(weight * upper_share).ravel(), minlength=total
        )
        histograms = counts.reshape(n, p, cells, orientation_bins)
        if not has_static_bin:
            return histograms
        pixels = np.bincount(cell.ravel(), minlength=cells).astype(np.float64)
        static_pixels = (~moving).reshape(n, p, h * w)
        static_per_cell = np.stack(
            [static_pixels[..., cell.ravel() == k].sum(axis=-1) for k in range(cells)], axis=-1
        )
        static_fraction = static_per_cell / pixels  # (N, P, cells)
        # Moving pixels have magnitude >= static_threshold > 0, so a cell with any moving pixel has a
        # histogram of positive sum and every row below sums to 1.
        moving_share = normalise_rows(histograms, "l1") * (1.0 - static_fraction)[..., None]
        return np.concatenate([static_fraction[..., None], moving_share], axis=-1)

    def describe(self, frames: np.ndarray, flows: np.ndarray | None, ctx: RunContext) -> np.ndarray:
        histograms = self.pair_histograms(flows)  # (N, P, cells, K)
        n, p = histograms.shape[:2]
        blocks = []
        for start, stop in pyramid_segments(p, self.config.pyramid_levels):
            pooled = histograms[:, start:stop].mean(axis=1)  # (N, cells, K)
            blocks.append(normalise_rows(pooled, "l1"))
        descriptor = np.concatenate(blocks, axis=1).reshape(n, -1)
        return normalise_rows(descriptor, self.config.normalize).astype(np.float32)


def pyramid_segments(num_pairs: int, levels: int) -> list[tuple[int, int]]:
    """``(start, stop)`` pair ranges of every temporal-pyramid segment, level 0 first.

    Level ``l`` cuts ``num_pairs`` into ``2**l`` nearly equal consecutive parts; a level with more parts
    than pairs reuses single pairs, so every segment holds at least one pair.
    """
    segments = []
    for level in range(levels):
        parts = 2**level
        edges = np.linspace(0, num_pairs, parts + 1)
        for k in range(parts):
            start = min(int(math.floor(edges[k])), num_pairs - 1)
            stop = max(int(math.floor(edges[k + 1])), start + 1)
            segments.append((start, stop))
    return segments


VARIANTS = (
    ("hoof_mirror", MirrorHoofConfig, "Chaudhry's mirror-symmetric HOOF, atan2(dy, |dx|)"),
    ("hoof_soft", SoftHoofConfig, "HOOF with soft assignment between neighbouring bins"),
    ("hoof_static", StaticBinHoofConfig, "HOOF with an extra bin for static pixels"),
    ("hoof_grid", GridHoofConfig, "one HOOF per cell of a g x g spatial grid, concatenated"),
    ("hoof_pyramid", PyramidHoofConfig, "HOOFs of a temporal pyramid of frame-pair segments"),
    ("hoof_orientation_magnitude", OrientationMagnitudeHoofConfig, "joint orientation x speed histogram"),
)


@hookimpl
def mwga_register_descriptors(register):
    for name, config, description in VARIANTS:
        register(name, HoofVariantDescriptor, config, description=description)
