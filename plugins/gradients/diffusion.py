"""Real per-clip gradients of a trained video diffusion model (MOTIVE / D-TRAK style).

The ``model`` stage trains the configured model (``model=...``) on the training clips or reads it from
the model store, and binds it here (:meth:`DiffusionGradient.bind_model`). ``iter_gradients`` then
computes, for every clip i,

    g_i = w_i / F * grad_theta  mean_k  out(theta; x_i, t_k, eps_k, y_i)

composed from the pieces of :mod:`mwga_core.diffusion`:

* the objective (:mod:`~mwga_core.diffusion.objectives`): ``timesteps`` t_k, each with ONE noise draw
  eps_k shared by every clip, training and query alike (common randomness), seeded from the run seed;
  ``output`` ``loss`` (eps-prediction MSE) or ``dtrak`` (mean squared norm of the prediction);
  ``weighting=mask`` multiplies the squared error (or the squared prediction for ``dtrak``) by MOTIVE's
  motion mask (the per-pixel flow magnitude, min-max normalised per clip, resized to the loss grid);
* the engine (:mod:`~mwga_core.diffusion.engines`): ``batched`` (default; one batched forward and
  backward per chunk of clips and timestep, checked once against torch.func) or ``vmap``; they agree to
  ~1e-7 relative; ``batched`` never back-propagates below the first selected layer, so a parameter
  subset (``params=temporal``) is faster and needs far less memory (docs/results-real-gradients.md);
* the contrast (:mod:`~mwga_core.diffusion.contrasts`): ``reverse``, ``static``, ``reverse_static``
  (weight ``contrast_static_weight``; the still copy made by ``still``: the middle frame repeated, or
  each frame warped onto it, :mod:`~mwga_core.diffusion.still_copies`), and ``regions`` x ``regions`` loss cells (``region_split=loss``)
  or weight gradients split by output position (``region_split=position``, batched engine).

With a factorized projector (``projection=kronecker``), the pipeline calls
:meth:`DiffusionGradient.iter_reduced_gradients` instead of ``iter_gradients``: every Linear / Conv weight
(:func:`~mwga_core.diffusion.factorized.factor_shape`) is projected per term, P_out G P_in^T, by the
engine from the layer's factors (``batched``: G is never formed), before the contrasts, regions, clip
scales and checkpoints combine the terms; all of those are linear, so this equals projecting the
finished gradient's blocks. Every other column is as ``iter_gradients`` yields it.

The clip scale w_i / F: ``weighting=scalar`` is eq. 3's w_i = ||d_i|| (the descriptor norm);
``frame_normalize`` divides by the F frames. ``params``: ``all``, ``temporal`` (the adapter's
across-frame parameters) or a regular expression searched in parameter names; ``checkpoints``: the
saved steps to differentiate (empty = the last), K of them give K gradient sets.

Conditioning (``conditioning``): with ``label``, a class-conditional model sees each clip's label.
Training clips use their true label; a query's label is its *intended* motion class, as a prompt would be
for a text-to-video model (held-out queries: the class they were drawn from; generated queries: the class
they were sampled for). The label alone then separates the classes, so the score says little about
motion. With ``unconditional``, every clip, training and query alike, is differentiated with the model's
null label (a model trained with ``model.training.label_dropout`` > 0, classifier-free-guidance style):
the model can still *generate* per-class queries, but no label reaches the gradients.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource
from mwga_core.api.projectors import FactorizedProjector, LayerFactors
from mwga_core.config.checks import at_least, one_of, satisfies
from mwga_core.diffusion.contrasts import (
    CONTRASTS,
    COUNTERPARTS,
    GradientFunction,
    LossRegions,
    make_contrast,
)
from mwga_core.diffusion.engines import (
    ENGINE_NAMES,
    EngineSettings,
    ExampleBatch,
    SelectedParameters,
    make_engine,
)
from mwga_core.diffusion.factorized import factor_shape
from mwga_core.diffusion.model_inputs import encode_clips, encode_counterparts
from mwga_core.diffusion.objectives import OUTPUT_FUNCTIONS, DiffusionObjective, motion_mask, shared_noise
from mwga_core.diffusion.still_copies import STILL_COPIES

if TYPE_CHECKING:
    import torch

    from mwga_core.api.models import ModelAdapter
    from mwga_core.api.trained_model import TrainedModel

WEIGHTINGS = ("none", "scalar", "mask")
REGION_SPLITS = ("loss", "position")
CONDITIONINGS = ("label", "unconditional")


def _is_selection(params: str) -> bool:
    """``all``, ``temporal`` or a regular expression that compiles."""
    try:
        re.compile(params)
    except re.error:
        return False
    return True


@dataclass
class DiffusionGradientConfig(GradientConfig):
    """Which gradient of the trained model, per clip (see the module docstring)."""

    #: diffusion timesteps t_k; one shared noise draw each; the gradient is their average
    timesteps: list[int] = field(
        default_factory=lambda: [500],
        metadata=satisfies(
            lambda ts: len(ts) > 0 and all(t >= 0 for t in ts), "a non-empty list of integers >= 0"
        ),
    )
    #: loss (eps-prediction MSE) or dtrak (mean squared norm of the prediction)
    output: str = field(default="loss", metadata=one_of(*OUTPUT_FUNCTIONS))
    #: none, scalar (eq. 3's ||d_i||) or mask (MOTIVE's per-pixel flow-magnitude mask)
    weighting: str = field(default="mask", metadata=one_of(*WEIGHTINGS))
    #: scale by 1/F (F = frames per clip)
    frame_normalize: bool = True
    #: all, temporal, or a regular expression searched in parameter names
    params: str = field(
        default="all", metadata=satisfies(_is_selection, "all, temporal or a valid regular expression")
    )
    #: checkpoint steps to differentiate; empty = the last one
    checkpoints: list[int] = field(default_factory=list)
    #: counterfactual contrast: none, reverse (the time-odd part), static, reverse_static (see the module docs)
    contrast: str = field(default="none", metadata=one_of(*CONTRASTS))
    #: weight of the (even - static) half of ``reverse_static``
    contrast_static_weight: float = field(default=0.4, metadata=at_least(0))
    #: how the static contrasts' still copy is made: repeat (the middle frame repeated), warp (each frame
    #: warped onto the middle frame along its flow: keeps per-frame noise) or warp_matched_noise (warp,
    #: plus the noise variance the bilinear reading lost, at the clip's noise level read from time: for
    #: noisy footage)
    still: str = field(default="repeat", metadata=one_of(*STILL_COPIES))
    #: split the loss into regions x regions spatial cells and concatenate their gradients (1 = whole frame)
    regions: int = field(default=1, metadata=at_least(1))
    #: loss (one gradient per cell's loss; any engine) or position (each layer's weight gradient summed per
    #: cell of its own output grid, from one backward; engine=batched, Conv/GroupNorm parameters)
    region_split: str = field(default="loss", metadata=one_of(*REGION_SPLITS))
    #: what a conditional model is given: label (each clip's class) or unconditional (the null label of a
    #: model trained with label dropout, for every clip: label-free gradients)
    conditioning: str = field(default="label", metadata=one_of(*CONDITIONINGS))
    #: clips per vmap chunk / batched pass (memory vs speed)
    chunk_size: int = field(default=16, metadata=at_least(1))
    #: bfloat16 autocast in the gradient forward pass
    bf16: bool = False
    #: per-clip gradient engine: batched (one batched forward/backward per chunk), vmap (torch.func; falls
    #: back to loop when it cannot batch the model) or loop (one clip at a time)
    engine: str = field(default="batched", metadata=one_of(*ENGINE_NAMES))


class DiffusionGradient(GradientSource):
    """Per-clip gradients of a trained diffusion model: objective, engine and contrast composed."""

    uses_model = True

    def __init__(self, config: DiffusionGradientConfig) -> None:
        super().__init__(config)
        c = config
        if c.regions > 1 and c.region_split == "position" and c.engine != "batched":
            raise ConfigValueError("region_split", c.region_split, "loss: position needs engine=batched")
        self.trained: TrainedModel | None = None

    # -- the model ----------------------------------------------------------------------------------

    def check_model(self, adapter: ModelAdapter) -> None:
        c, model = self.config, adapter.config
        if max(c.timesteps) >= model.diffusion_steps:
            raise ConfigValueError(
                "timesteps", list(c.timesteps), f"integers in [0, {model.diffusion_steps})"
            )
        if c.conditioning == "unconditional" and not (model.conditional and model.training.label_dropout > 0):
            raise ConfigValueError(
                "conditioning",
                c.conditioning,
                "label, or a model with a null label (model.conditional=true, model.training.label_dropout > 0)",
            )

    def bind_model(self, model: TrainedModel) -> None:
        self.check_model(model.adapter)
        if any(s not in model.steps for s in self.config.checkpoints):
            raise ConfigValueError(
                "checkpoints", list(self.config.checkpoints), f"saved steps among {model.steps}"
            )
        self.trained = model

    def checkpoint_id(self) -> str | None:
        """The trained model's key and the differentiated checkpoint steps."""
        trained = self._require_trained()
        return f"{trained.key}@" + ",".join(str(s) for s in self._steps(trained))

    def prepare(self, train: AnalysedClips, ctx: RunContext) -> None:
        """Refuse a weighting the analysed clips cannot give, before the model is trained."""
        self._check_weighting(train)

    def _require_trained(self) -> TrainedModel:
        if self.trained is None:
            raise RuntimeError("DiffusionGradient.bind_model() must run before gradients (the model stage)")
        return self.trained

    def _steps(self, trained: TrainedModel) -> list[int]:
        return list(self.config.checkpoints) or [trained.steps[-1]]

    def selected_parameter_names(self, module: torch.nn.Module) -> list[str]:
        """The parameter names ``params`` selects, in the module's order."""
        names = [name for name, _ in module.named_parameters()]
        if self.config.params == "all":
            chosen = names
        elif self.config.params == "temporal":
            temporal = set(self._require_trained().adapter.temporal_parameter_names(module))
            chosen = [n for n in names if n in temporal]
        else:
            pattern = re.compile(self.config.params)
            chosen = [n for n in names if pattern.search(n)]
        if not chosen:
            raise ConfigValueError(
                "gradient.params", self.config.params, f"a selection matching some of {names}"
            )
        return chosen

    # -- gradients ----------------------------------------------------------------------------------

    def iter_gradients(self, clips: AnalysedClips, ctx: RunContext) -> Iterator[GradientChunk]:
        return self._chunks(clips, ctx, None)

    def iter_reduced_gradients(
        self, clips: AnalysedClips, ctx: RunContext, projector: FactorizedProjector
    ) -> Iterator[GradientChunk]:
        """:meth:`iter_gradients` with every Linear / Conv weight's columns replaced by its projection
        P_out G P_in^T (``projector``'s :meth:`~FactorizedProjector.layer_factors`), per term.

        Shape: yields chunks of (K, n, D') float32, D' = the reduced sizes times the contrast's parts
        and the regions.
        """
        return self._chunks(clips, ctx, projector)

    def _chunks(
        self, clips: AnalysedClips, ctx: RunContext, projector: FactorizedProjector | None
    ) -> Iterator[GradientChunk]:
        import torch

        trained = self._require_trained()
        self._check_weighting(clips)
        objective = self.objective(trained, ctx)
        contrast = make_contrast(self.config.contrast, self.config.contrast_static_weight)
        per_checkpoint = [
            self.gradient_function(trained.module(step, device=ctx.device), objective, ctx, projector)
            for step in self._steps(trained)
        ]
        adapter, frames = trained.adapter, clips.clips.frames
        x0_all = encode_clips(adapter, frames, ctx)
        counterparts_all = encode_counterparts(
            adapter, frames, COUNTERPARTS[self.config.contrast], ctx, still=self.config.still
        )
        condition_all = adapter.condition(clips.clips) or {}
        labels_all = self._labels(clips, trained)
        weights = self.loss_weights(clips, trained)
        scale = self.clip_scales(clips)
        block = max(self.config.chunk_size * 4, 1)
        for start in range(0, len(clips), block):
            index = np.arange(start, min(start + block, len(clips)))
            batch = ExampleBatch(
                x0_all[index].to(ctx.device),
                labels_all[index].to(ctx.device),
                None if weights is None else weights[index].to(ctx.device),
                {name: value[index].to(ctx.device) for name, value in condition_all.items()},
                {name: value[index].to(ctx.device) for name, value in counterparts_all.items()},
            )
            grads = torch.stack([contrast(gradient, batch) for gradient in per_checkpoint])
            grads.mul_(torch.as_tensor(scale[index], dtype=grads.dtype, device=grads.device)[None, :, None])
            yield GradientChunk(indices=index, grads=grads.float())

    def objective(self, trained: TrainedModel, ctx: RunContext) -> DiffusionObjective:
        """The configured objective on the trained model, its noise and timesteps on ``ctx.device``."""
        import torch

        c, adapter = self.config, trained.adapter
        return DiffusionObjective(
            adapter=adapter,
            output=OUTPUT_FUNCTIONS[c.output](adapter),
            timesteps=[torch.tensor([t], dtype=torch.int64, device=ctx.device) for t in c.timesteps],
            noises=[
                noise.to(ctx.device)
                for noise in shared_noise(adapter.model_shape(trained.clip_shape), c.timesteps, ctx)
            ],
            conditional=adapter.config.conditional,
        )

    def gradient_function(
        self,
        module: torch.nn.Module,
        objective: DiffusionObjective,
        ctx: RunContext,
        projector: FactorizedProjector | None = None,
    ) -> GradientFunction:
        """Per-clip gradients of ``module`` (batch -> (n, D)): the engine, with the loss split into
        regions when ``region_split=loss``; with a ``projector``, its layer factors applied."""
        import torch

        c = self.config
        position_cells = c.regions if c.region_split == "position" else 1
        settings = EngineSettings(c.chunk_size, c.bf16, torch.device(ctx.device).type)
        engine = make_engine(c.engine, settings, position_cells)
        selection = SelectedParameters.of(module, self.selected_parameter_names(module))
        factors = None if projector is None else layer_factors(selection, projector, ctx)
        gradient = partial(engine.gradients, selection, objective, factors=factors)
        if c.region_split != "loss":
            return gradient
        trained = self._require_trained()
        return LossRegions(c.regions, trained.adapter.loss_grid(trained.clip_shape)).wrap(gradient)

    def _labels(self, clips: AnalysedClips, trained: TrainedModel) -> torch.Tensor:
        """(n,) int64: each clip's class, or the null label for ``conditioning=unconditional``."""
        import torch

        if self.config.conditioning == "unconditional":
            return torch.full((len(clips),), trained.null_label, dtype=torch.int64)
        return torch.as_tensor(clips.clips.labels, dtype=torch.int64).clamp(min=0)

    def clip_scales(self, clips: AnalysedClips) -> np.ndarray:
        """(n,) float32 w_i / F: the descriptor norm (``weighting=scalar``) over the frame count."""
        scale = np.ones(len(clips), dtype=np.float64)
        if self.config.weighting == "scalar":
            scale *= np.linalg.norm(clips.descriptors.astype(np.float64), axis=1)
        if self.config.frame_normalize:
            scale /= clips.clips.num_frames
        return scale.astype(np.float32)

    def loss_weights(self, clips: AnalysedClips, trained: TrainedModel) -> torch.Tensor | None:
        """(n, 1, T', H', W') MOTIVE motion masks on the model's loss grid, or None without a mask."""
        import torch

        if self.config.weighting != "mask":
            return None
        grid = trained.adapter.loss_grid(trained.clip_shape)
        return torch.from_numpy(motion_mask(clips.flows, grid))[:, None]

    def _check_weighting(self, clips: AnalysedClips) -> None:
        weighting = self.config.weighting
        if weighting == "mask" and clips.flows is None:
            raise ConfigValueError("weighting", weighting, "none or scalar: this method computes no flow")
        if weighting == "scalar" and clips.descriptors is None:
            raise ConfigValueError("weighting", weighting, "none or mask: this method computes no descriptor")


def layer_factors(
    selection: SelectedParameters, projector: FactorizedProjector, ctx: RunContext
) -> dict[str, LayerFactors]:
    """The projector's factors, on ``ctx.device``, for every selected weight with a factor form."""
    factors = {}
    for name in selection.names:
        shape = factor_shape(selection.module, name)
        if shape is not None:
            factors[name] = projector.layer_factors(name, *shape, ctx).to(ctx.device)
    return factors


@hookimpl
def mwga_register_gradient_sources(register):
    register(
        "diffusion",
        DiffusionGradient,
        DiffusionGradientConfig,
        description="per-clip gradients of a trained video diffusion model (torch.func)",
    )
