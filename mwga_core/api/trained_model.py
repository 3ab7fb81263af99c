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
from typing import TYPE_CHECKING, Union

from mwga_core.api.errors import DataError
from mwga_core.api.models import ModelAdapter

if TYPE_CHECKING:
    import torch

#: one checkpoint's weights: a safetensors file, or a state dict in memory
Weights = Union[Path, Mapping[str, "torch.Tensor"]]  # noqa: UP007 (a runtime alias with a string member)
#: mismatching keys an error message lists at most
SHOWN_KEYS = 5


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
        weights = self.checkpoints[step]
        if isinstance(weights, Path):
            from safetensors.torch import load_file

            return load_file(str(weights))
        return weights

    def module(self, step: int | None = None, device: str = "cpu") -> torch.nn.Module:
        """The denoiser with the weights of checkpoint ``step`` (default: the last), in eval mode."""
        weights = self.weights(step)
        module = self.adapter.load(weights, self.clip_shape, self.adapter.embedding_classes(self.num_classes))
        return module.to(device).eval()


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load ``weights`` into ``module`` (strict), or raise a :class:`DataError` naming what does not fit.

    Args:
        origin: what the weights are, for the message (a file name, ``"weights for VideoDenoiserAdapter"``).

    The message lists up to :data:`SHOWN_KEYS` missing keys, unexpected keys and keys whose shape differs.
    """
    expected = module.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [
        f"{name} {tuple(weights[name].shape)} (module: {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in weights and tuple(weights[name].shape) != tuple(tensor.shape)
    ]
    problems = [
        f"{label}: {', '.join(names[:SHOWN_KEYS])}{' ...' if len(names) > SHOWN_KEYS else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
        if names
    ]
    if problems:
        raise DataError(f"{origin} do not fit {type(module).__name__}: " + "; ".join(problems) + ".")
    module.load_state_dict(dict(weights))
