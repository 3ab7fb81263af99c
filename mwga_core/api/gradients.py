"""Gradient sources: per-clip (motion-weighted) gradient vectors, streamed in chunks.

A source that differentiates a trained model (``uses_model``) receives it from the ``model`` stage
through :meth:`GradientSource.bind_model`; it never trains one itself. The pieces a real-gradient source
is made of (per-example engines, objectives, contrasts) are in :mod:`mwga_core.diffusion`.

Built-in implementations (``plugins/gradients``):
    diffusion: per-clip gradients of a trained video diffusion model (MOTIVE / D-TRAK style).
    simulated: the paper's eq. 4 simulation, a noisy random embedding of the HOOF descriptor.
    none: no gradient; the descriptor itself is the feature (for descriptor-only baselines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig

if TYPE_CHECKING:
    import torch

    from mwga_core.api.models import ModelAdapter
    from mwga_core.api.trained_model import TrainedModel


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

    #: True for sources that differentiate a trained model. The pipeline then builds the run's model
    #: adapter (config group ``model``) and hands it to :meth:`check_model` before any work, runs the
    #: ``model`` stage on the training clips (:mod:`mwga_core.pipeline.model_stage`: train, or read the
    #: model store) and hands its result to :meth:`bind_model` before any ``iter_gradients``; generated
    #: queries (``query=generated``) are sampled from the same trained model.
    uses_model: bool = False

    def __init__(self, config: GradientConfig) -> None:
        check_fields(config)
        self.config = config

    def check_model(self, adapter: ModelAdapter) -> None:
        """Refuse a model this source cannot differentiate (a config error), before anything is trained.

        Only called when :attr:`uses_model`. Default: accept any.
        """

    def bind_model(self, model: TrainedModel) -> None:
        """Receive the trained model to differentiate; only called when :attr:`uses_model`."""
        raise NotImplementedError(f"{type(self).__name__} sets uses_model but does not take the model")

    def prepare(self, train: AnalysedClips, ctx: RunContext) -> None:
        """Check or fit what the source derives from the training clips (not a model: see
        :meth:`bind_model`), before the ``model`` stage. ``mwga index`` calls it, on the whole corpus,
        for sources that :attr:`uses_model`. Default: nothing."""

    def checkpoint_id(self) -> str | None:
        """An identifier of the model weights the gradients come from (e.g. the trained model's key),
        valid after :meth:`bind_model`. The feature store records it and refuses to mix features of
        different checkpoints. Default: None (no model)."""
        return None

    @abstractmethod
    def iter_gradients(self, clips: AnalysedClips, ctx: RunContext) -> Iterator[GradientChunk]:
        """Yield the gradients of ``clips`` chunk by chunk, each clip exactly once, in any order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
