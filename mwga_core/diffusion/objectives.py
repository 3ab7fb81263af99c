"""Objectives: what is differentiated per clip (TRAK's "model output function"), and MOTIVE's mask.

The diffusion objective of a clip x0 with label y averages an output over fixed timesteps t_k, each with
ONE noise draw eps_k shared by every clip, training and query alike (common randomness):

    f(theta; x0, y) = 1/K sum_k out(pred_theta(x_k, t_k, y, c), target(x0, eps_k, t_k), w),
    x_k = add_noise(x0, t_k, eps_k)

where c is the clip's conditioning (:meth:`ModelAdapter.condition`, e.g. its caption's embedding) and
the target is what the model family regresses on (eps, v or flow velocity, :meth:`ModelAdapter.target`),
with ``out`` one of

* :class:`DiffusionLoss`: the model's training MSE (:meth:`ModelAdapter.per_example_loss`), weighted per
  element of the loss grid by w;
* :class:`DTrakOutput`: D-TRAK's mean squared norm of the prediction, of ``prediction * sqrt(w)``;

and w None or MOTIVE's motion mask (:func:`motion_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.models import ModelAdapter
from mwga_core.diffusion.engines import ExampleBatch, Forward

if TYPE_CHECKING:
    import torch

#: added to the mask's max - min so that a clip without motion gets a zero mask, not a division by 0
MASK_EPS = 1e-6


class OutputFunction(Protocol):
    """One timestep's per-clip output. Shape: prediction, target (n, C, T, H, W), weight None or
    broadcastable to them -> (n,)."""

    def __call__(
        self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class DiffusionLoss:
    """The model's training loss per clip: the prediction's MSE to its target, weighted by ``weight``
    (MOTIVE)."""

    adapter: ModelAdapter

    def __call__(
        self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        return self.adapter.per_example_loss(prediction, target, weight)


@dataclass(frozen=True)
class DTrakOutput:
    """D-TRAK's output: the mean squared norm of the prediction; ``weight`` multiplies its square."""

    adapter: ModelAdapter

    def __call__(
        self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        masked = prediction if weight is None else prediction.float() * weight.sqrt()
        return self.adapter.dtrak_output(masked)


#: ``gradient.output`` -> the output function's class
OUTPUT_FUNCTIONS = {"loss": DiffusionLoss, "dtrak": DTrakOutput}


@dataclass(frozen=True)
class DiffusionObjective:
    """The mean over fixed timesteps of an output function (see the module docstring).

    Attributes:
        adapter: noises the clips (:meth:`ModelAdapter.add_noise`).
        output: the per-timestep output.
        timesteps: K tensors of shape (1,) int64, the t_k.
        noises: K tensors (C, T, H, W) in model space, the shared eps_k.
        conditional: give the model the batch's labels (else None).
    """

    adapter: ModelAdapter
    output: OutputFunction
    timesteps: list[torch.Tensor]
    noises: list[torch.Tensor]
    conditional: bool

    @property
    def num_terms(self) -> int:
        return len(self.timesteps)

    def __call__(
        self, forward: Forward, batch: ExampleBatch, terms: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The timesteps ``terms``' share of the mean over all K timesteps (all by default). -> (n,), or
        (n, m) for a batch with m cells: one forward pass, the output once per cell's weight."""
        import torch

        weights = batch.cell_weights()
        total = 0.0
        for k in range(self.num_terms) if terms is None else terms:
            t_n, noise = self.timesteps[k].expand(batch.x0.shape[0]), self.noises[k]
            x_t = self.adapter.add_noise(batch.x0, t_n, noise[None])
            prediction = forward(x_t, t_n, batch.labels if self.conditional else None, **batch.condition)
            target = self.adapter.target(batch.x0, noise[None], t_n)
            outputs = [self.output(prediction, target, weight) for weight in weights]
            total = total + (outputs[0] if batch.cells is None else torch.stack(outputs, dim=1))
        return total / self.num_terms


def shared_noise(
    model_shape: tuple[int, int, int, int], timesteps: Sequence[int], ctx: RunContext
) -> list[torch.Tensor]:
    """One noise draw per timestep, seeded from the run seed, the same for every clip.

    Shape: model_shape (C, T, H, W) of one clip in model space (:meth:`ModelAdapter.model_shape`) -> K
    tensors (C, T, H, W) float32 (on the CPU).
    """
    import torch

    c, t, h, w = model_shape
    return [
        torch.randn(
            (c, t, h, w), generator=torch.Generator().manual_seed(ctx.seed_for("diffusion-noise", k, ts))
        )
        for k, ts in enumerate(timesteps)
    ]


def motion_mask(flows: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """MOTIVE's loss-space motion mask.

    Frame f gets the mean flow magnitude of the frame pairs it belongs to; the clip's map is min-max
    normalised over all its frames and pixels (eps :data:`MASK_EPS`) and area-resized to ``grid``.

    Shape:
        flows: (N, T-1, H, W, 2); grid: (T', H', W'); returns (N, T', H', W') float32 in [0, 1].
    """
    import torch

    magnitude = np.hypot(flows[..., 0], flows[..., 1]).astype(np.float32)  # (N, T-1, H, W)
    per_frame = np.concatenate([magnitude[:, :1], magnitude], axis=1)
    per_frame[:, 1:-1] = 0.5 * (magnitude[:, :-1] + magnitude[:, 1:])
    per_frame[:, -1] = magnitude[:, -1]
    n = per_frame.shape[0]
    flat = per_frame.reshape(n, -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    normalised = ((flat - low) / (high - low + MASK_EPS)).reshape(per_frame.shape)
    mask = torch.from_numpy(normalised)[:, None]
    if tuple(mask.shape[2:]) != tuple(grid):
        mask = torch.nn.functional.adaptive_avg_pool3d(mask, grid)
    return mask[:, 0].numpy().astype(np.float32)
