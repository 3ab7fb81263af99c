"""Clips as a model sees them: encoded (cached for an expensive encoder) with their counterparts.

Pixel-space models encode a clip by rescaling it, which costs nothing. A latent model encodes it with
its VAE, which is worth keeping: when :meth:`~mwga_core.api.models.ModelAdapter.encoder_key` names the
encoder, the encoded clips are kept in the stage cache (stage ``latents``) under that name and the
frames' content, like the model store keeps trained models (in ``cache.dir``, whatever
``cache.enabled`` says).

A contrast differentiates counterfactual copies of each clip: played backwards, or held still (its
middle frame repeated). A video VAE does not commute with either (a causal one encodes frame 0 alone),
so for an adapter whose :attr:`~mwga_core.api.models.ModelAdapter.time_reversal_commutes` is False the
counterparts are encoded from their own frames here, before the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.models import ModelAdapter
from mwga_core.diffusion.still_copies import still_frames
from mwga_core.storage.keys import array_digest
from mwga_core.storage.stage_cache import StageCache

if TYPE_CHECKING:
    import torch

#: the stage-cache stage that keeps encoded clips
LATENT_STAGE = "latents"


def reversed_frames(frames: np.ndarray) -> np.ndarray:
    """Each clip played backwards. Shape: (N, T, H, W, C) -> (N, T, H, W, C)."""
    return np.ascontiguousarray(frames[:, ::-1])


def counterpart_frames(frames: np.ndarray, name: str, still: str = "repeat") -> np.ndarray:
    """The frames of counterpart ``name`` (:data:`COUNTERPART_NAMES`); ``still``: how a still copy is made
    (:data:`~mwga_core.diffusion.still_copies.STILL_COPIES`). Shape: (N, T, H, W, C) -> same."""
    if name == "reversed":
        return reversed_frames(frames)
    return still_frames(frames, still)


#: the counterparts (:attr:`~mwga_core.diffusion.engines.ExampleBatch.counterparts`) a clip can have
COUNTERPART_NAMES = ("reversed", "still")


def encode_clips(adapter: ModelAdapter, frames: np.ndarray, ctx: RunContext) -> torch.Tensor:
    """``adapter.encode(frames)``, read from / written to the stage cache when the adapter names its
    encoder (:meth:`~mwga_core.api.models.ModelAdapter.encoder_key`).

    Shape: frames (N, T, H, W, C) float in [0, 1] -> (N, *adapter.model_shape(clip_shape)) float32.
    """
    import torch

    encoder = adapter.encoder_key()
    if encoder is None:
        return adapter.encode(frames)
    cache = StageCache(Path(ctx.cache_dir), seed=ctx.seed)
    key = cache.key(LATENT_STAGE, extra={"encoder": encoder, "frames": array_digest(frames)})
    clip_shape = tuple(int(s) for s in frames.shape[1:])
    expect = {"latents": [len(frames), *adapter.model_shape(clip_shape)]}

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        with torch.no_grad():
            latents = adapter.encode(frames)
        return {"latents": latents.float().cpu().numpy()}, {"encoder": encoder}

    entry = cache.fetch(LATENT_STAGE, key, compute, label="latents", expect=expect)
    return torch.from_numpy(np.array(entry.arrays["latents"], dtype=np.float32))


def encode_counterparts(
    adapter: ModelAdapter, frames: np.ndarray, names: Sequence[str], ctx: RunContext, still: str = "repeat"
) -> dict[str, torch.Tensor]:
    """The counterparts ``names`` (of :data:`COUNTERPART_NAMES`) encoded from their own frames.

    An adapter whose encoder commutes with time reversal gets only what the encoded clip cannot give:
    a ``still`` copy made by ``still="warp"`` (:mod:`~mwga_core.diffusion.still_copies`); contrasts flip
    or hold the encoded clip itself for the rest, which is the same and costs nothing.

    Shape: frames (N, T, H, W, C) -> name -> (N, *model_shape).
    """
    if adapter.time_reversal_commutes:
        names = [name for name in names if name == "still" and still != "repeat"]
    return {name: encode_clips(adapter, counterpart_frames(frames, name, still), ctx) for name in names}
