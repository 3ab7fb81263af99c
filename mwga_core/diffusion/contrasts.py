"""Contrasts: per-clip gradients combined with those of counterfactual clips, to cancel appearance.

A contrast takes a per-example gradient function G (an engine bound to a model and an objective, batch
-> (n, D)) and a batch, and returns the contrasted gradients. With R x the clip played backwards and S x
its middle frame repeated (same frames, hence the same texture; no motion):

* :func:`no_contrast`: G(x).
* :func:`reverse_contrast`: the time-odd part (G(x) - G(Rx)) / 2: the direction of motion flips, the
  texture does not.
* :func:`static_contrast`: G(x) - G(Sx).
* :class:`ReverseStaticContrast`: the time-odd part, concatenated with ``static_weight`` x
  ((G(x) + G(Rx)) / 2 - G(Sx)), the motion that has no direction (e.g. a random walk). Shape (n, 2D).

:class:`LossRegions` wraps G itself: the loss split into r x r spatial cells, one gradient per cell,
concatenated (n, r^2 D), so that motion whose direction varies over the frame (rotation, zoom) does not
cancel in weights every position shares. The cells' gradients sum to the whole-frame gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mwga_core.diffusion.engines import ExampleBatch

if TYPE_CHECKING:
    import torch

#: batch -> (n, D) per-example gradients
GradientFunction = Callable[[ExampleBatch], "torch.Tensor"]
#: (gradient function, batch) -> (n, D') contrasted gradients
Contrast = Callable[[GradientFunction, ExampleBatch], "torch.Tensor"]


#: contrast name -> the counterpart clips (:attr:`ExampleBatch.counterparts`) it differentiates
COUNTERPARTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "reverse": ("reversed",),
    "static": ("still",),
    "reverse_static": ("reversed", "still"),
}


def time_reversed(batch: ExampleBatch) -> ExampleBatch:
    """The clips played backwards, their loss weights too. Time is dim 2 of x0 and of the weight.

    A latent model's batch carries the reversed clips encoded from reversed frames
    (``counterparts["reversed"]``), since its video VAE does not commute with reversal; otherwise x0 is
    flipped.
    """
    weight = None if batch.weight is None else batch.weight.flip(2)
    x0 = batch.counterparts["reversed"] if "reversed" in batch.counterparts else batch.x0.flip(2)
    return ExampleBatch(x0, batch.labels, weight, batch.condition)


def held_still(batch: ExampleBatch) -> ExampleBatch:
    """Each clip's middle frame repeated over its length (no motion, the same texture); same weights.

    A latent model's batch carries them encoded from still frames (``counterparts["still"]``).
    """
    if "still" in batch.counterparts:
        still = batch.counterparts["still"]
    else:
        middle = batch.x0.shape[2] // 2
        still = batch.x0[:, :, middle : middle + 1].expand_as(batch.x0).contiguous()
    return ExampleBatch(still, batch.labels, batch.weight, batch.condition)


def no_contrast(gradient: GradientFunction, batch: ExampleBatch) -> torch.Tensor:
    """G(x). Shape: (n, D)."""
    return gradient(batch)


def reverse_contrast(gradient: GradientFunction, batch: ExampleBatch) -> torch.Tensor:
    """(G(x) - G(Rx)) / 2. Shape: (n, D)."""
    g = gradient(batch)
    g_reversed = gradient(time_reversed(batch))
    return (g - g_reversed) / 2


def static_contrast(gradient: GradientFunction, batch: ExampleBatch) -> torch.Tensor:
    """G(x) - G(Sx). Shape: (n, D)."""
    g = gradient(batch)
    g_static = gradient(held_still(batch))
    return g - g_static


@dataclass(frozen=True)
class ReverseStaticContrast:
    """[(G(x) - G(Rx)) / 2, static_weight ((G(x) + G(Rx)) / 2 - G(Sx))]. Shape: (n, 2D)."""

    static_weight: float

    def __call__(self, gradient: GradientFunction, batch: ExampleBatch) -> torch.Tensor:
        import torch

        g = gradient(batch)
        g_reversed = gradient(time_reversed(batch))
        odd = (g - g_reversed) / 2
        g_static = gradient(held_still(batch))
        even = (g + g_reversed) / 2
        return torch.cat([odd, self.static_weight * (even - g_static)], dim=1)


def make_contrast(name: str, static_weight: float) -> Contrast:
    """``none``, ``reverse``, ``static`` or ``reverse_static`` (see the module docstring)."""
    if name == "reverse_static":
        return ReverseStaticContrast(static_weight)
    return {"none": no_contrast, "reverse": reverse_contrast, "static": static_contrast}[name]


#: the names :func:`make_contrast` knows
CONTRASTS = ("none", "reverse", "static", "reverse_static")


@dataclass(frozen=True)
class LossRegions:
    """The loss split into ``regions`` x ``regions`` spatial cells of a (T, H, W) loss ``grid``.

    Each cell's gradient is G with the loss weight multiplied by the cell's 0/1 mask (all ones where
    the batch has no weight); :meth:`wrap` hands G the cells (:attr:`ExampleBatch.cells`) and G returns
    their gradients cell by cell, row by row. The batched engine shares one forward pass among the cells.
    """

    regions: int
    grid: tuple[int, int, int]

    def wrap(self, gradient: GradientFunction) -> GradientFunction:
        """G split by cells. Shape: batch -> (n, regions^2 D); ``regions`` = 1 gives G itself."""
        import dataclasses

        import torch

        from mwga_core.diffusion.per_sample import grid_cells

        if self.regions == 1:
            return gradient
        frames, height, width = self.grid
        masks = torch.stack(
            [cell.expand(frames, height, width) for cell in grid_cells(height, width, self.regions)]
        )

        def per_cell(batch: ExampleBatch) -> torch.Tensor:
            return gradient(dataclasses.replace(batch, cells=masks))

        return per_cell
