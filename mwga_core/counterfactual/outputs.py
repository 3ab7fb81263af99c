"""Model-output functions the counterfactual protocols measure on each query.

Both are computed at fixed timesteps t_k with one fixed noise draw each, shared by every model and
query (:func:`~mwga_core.diffusion.objectives.shared_noise`), so the only thing that differs between two
models' outputs is their weights:

* ``loss``: the eps-prediction loss on the query, averaged over the timesteps (D-TRAK's output);
* ``motion``: that loss minus the loss on the query's *still copy* (its middle frame repeated), i.e. the
  part of the loss that the query's motion adds.

Lower is better for both: a training clip that teaches the query's motion lowers them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.trained_model import TrainedModel
from mwga_core.diffusion.model_inputs import encode_clips
from mwga_core.diffusion.objectives import shared_noise
from mwga_core.diffusion.still_copies import repeated_middle_frames

#: the output functions, in report order
OUTPUT_NAMES: tuple[str, ...] = ("loss", "motion")


def query_losses(
    model: TrainedModel, frames: np.ndarray, labels: np.ndarray, timesteps: Sequence[int], ctx: RunContext
) -> np.ndarray:
    """The loss of ``model`` (its last checkpoint) on each clip, averaged over ``timesteps``.

    Shape: frames (Q, T, H, W, C) in [0, 1], labels (Q,) -> (Q,) float64.
    """
    import torch

    adapter = model.adapter
    module = model.module(device=ctx.device)
    noises = shared_noise(adapter.model_shape(model.clip_shape), timesteps, ctx)
    x0 = encode_clips(adapter, frames, ctx).to(ctx.device)
    conditional = adapter.config.conditional
    label_tensor = (
        torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(ctx.device) if conditional else None
    )
    total = torch.zeros(len(frames), dtype=torch.float64)
    with torch.no_grad():
        for t, noise in zip(timesteps, noises, strict=True):
            t_n = torch.full((len(frames),), int(t), dtype=torch.int64, device=ctx.device)
            batch_noise = noise[None].expand_as(x0).to(ctx.device)
            prediction = module(adapter.add_noise(x0, t_n, batch_noise), t_n, label_tensor)
            target = adapter.target(x0, batch_noise, t_n)
            total += adapter.per_example_loss(prediction, target).double().cpu()
    return (total / len(timesteps)).numpy()


def model_outputs(
    model: TrainedModel, queries: ClipSet, timesteps: Sequence[int], ctx: RunContext
) -> dict[str, np.ndarray]:
    """Every output of :data:`OUTPUT_NAMES` for every query. Returns name -> (Q,) float64."""
    loss = query_losses(model, queries.frames, queries.labels, timesteps, ctx)
    still = query_losses(model, repeated_middle_frames(queries.frames), queries.labels, timesteps, ctx)
    return {"loss": loss, "motion": loss - still}
