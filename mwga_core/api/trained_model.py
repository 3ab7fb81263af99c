"""A trained denoiser: what the ``model`` stage hands to the gradient source and to query generation.

A :class:`TrainedModel` names the adapter that loads it, the clips it models and one set of weights per
saved training step. The weights are a safetensors file (the model store's checkpoints, or a user's
file) or a state dict already in memory (a module trained or loaded elsewhere); either way
:meth:`TrainedModel.module` builds the module through :meth:`ModelAdapter.load`. Untrusted weights are
read with safetensors only, never unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mwga_core.api.models import ModelAdapter, Weights, weights_in_memory

if TYPE_CHECKING:
    import torch


@dataclass
class TrainedModel:
    """A trained denoiser's checkpoints and how to load them.

    Attributes:
        adapter: the model adapter whose :meth:`~ModelAdapter.load` builds the module.
        clip_shape: (T, H, W, C) of the clips it models.
        num_classes: classes of the data; the class embedding has ``adapter.embedding_classes(num_classes)``
            rows (one more with label dropout: the null label).
        key: identifies the weights (e.g. the model store's key); gradient sources build their
            ``checkpoint_id`` from it, so features of different weights never mix.
        checkpoints: training step -> that checkpoint's weights.
        info: what the store recorded (config, checkpoint steps, training log); empty when unknown.
        loaded_from_cache: False when this run trained it.
        folder: the model store folder it was read from or written to, or None.
    """

    adapter: ModelAdapter
    clip_shape: tuple[int, int, int, int]
    num_classes: int
    key: str
    checkpoints: dict[int, Weights]
    info: dict = field(default_factory=dict)
    loaded_from_cache: bool = False
    folder: Path | None = None

    @property
    def steps(self) -> list[int]:
        """The saved checkpoint steps, ascending."""
        return sorted(self.checkpoints)

    @property
    def null_label(self) -> int | None:
        """The "no class" label of a model trained with label dropout, else None."""
        return self.adapter.null_label(self.num_classes)

    def weights(self, step: int | None = None) -> Mapping[str, torch.Tensor]:
        """The state dict of checkpoint ``step`` (default: the last)."""
        step = self.steps[-1] if step is None else step
        if step not in self.checkpoints:
            raise KeyError(f"no checkpoint at step {step}; saved steps: {self.steps}")
        return weights_in_memory(self.checkpoints[step])

    def module(self, step: int | None = None, device: str = "cpu") -> torch.nn.Module:
        """The denoiser with the weights of checkpoint ``step`` (default: the last), in eval mode."""
        weights = self.weights(step)
        module = self.adapter.load(weights, self.clip_shape, self.adapter.embedding_classes(self.num_classes))
        return module.to(device).eval()
