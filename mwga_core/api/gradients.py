"""Gradient sources: per-clip (motion-weighted) gradient vectors, streamed in chunks.

Built-in implementations (``plugins/gradients``):
    simulated: the paper's eq. 4 simulation, a noisy random embedding of the HOOF descriptor.
    none: no gradient; the descriptor itself is the feature (for descriptor-only baselines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.plugin_host.registry import ComponentConfig

if TYPE_CHECKING:
    import torch

    from mwga_core.api.models import ModelAdapter


@dataclass
class GradientConfig(ComponentConfig):
    """Base config for gradient sources."""


@dataclass
class GradientChunk:
    """Gradients of some clips.

    Attributes:
        indices: (n,) int64 positions of these clips in the :class:`AnalysedClips` they came from.
        grads: (K, n, D) float32 tensor; K = number of checkpoints (1 unless ensembling).
    """

    indices: np.ndarray
    grads: torch.Tensor


class GradientSource(ABC):
    """Per-clip gradients. ``prepare`` sees the training clips once before any ``iter_gradients``."""

    #: True for sources that differentiate a trained model: the pipeline calls :meth:`bind_model` with
    #: the configured model adapter, and ``query=generated`` samples queries through
    #: :meth:`generate_queries`.
    uses_model: bool = False

    def __init__(self, config: GradientConfig) -> None:
        self.config = config

    def bind_model(self, model: ModelAdapter) -> None:
        """Receive the run's model adapter (config group ``model``); only called when ``uses_model``."""

    def generate_queries(
        self, class_names: list[str], per_class: int, ctx: RunContext, context: ClipSet | None = None
    ) -> ClipSet:
        """Sample ``per_class`` query clips per class from the prepared model (``query=generated``).

        ``context``: the held-out clips; an image-to-video model continues their first frames.
        """
        raise NotImplementedError(f"{type(self).__name__} has no model to sample queries from")

    def prepare(self, train: AnalysedClips, ctx: RunContext) -> None:
        """Fit or load whatever the source needs (a trained model, say). Default: nothing."""

    def checkpoint_id(self) -> str | None:
        """An identifier of the model weights the gradients come from (e.g. a hash of the checkpoint
        files), valid after :meth:`prepare`. The feature store records it and refuses to mix features of
        different checkpoints. Default: None (no model)."""
        return None

    @abstractmethod
    def iter_gradients(self, clips: AnalysedClips, ctx: RunContext) -> Iterator[GradientChunk]:
        """Yield the gradients of ``clips`` chunk by chunk, each clip exactly once, in any order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
