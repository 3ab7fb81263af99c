"""Real per-clip gradients of a trained video diffusion model (MOTIVE / D-TRAK style).

``prepare`` trains the configured model (``model=...``) on the training clips, or loads it from the
cache (:func:`mwga_core.diffusion.training.load_or_train`). ``iter_gradients`` then computes, for every clip i,

    g_i = w_i / F * grad_theta  mean_k  out(theta; x_i, t_k, eps_k, y_i)

computed by ``engine``: ``batched`` (default) runs ONE batched forward and backward per chunk of clips and
forms each clip's gradient from its layer inputs and output gradients (:mod:`.per_sample`); ``vmap``
runs ``torch.func.vmap(torch.func.grad(...), chunk_size=...)`` over ``functional_call``. Both give the
same gradients (to float rounding, ~1e-7 relative) at the same speed with all parameters; ``batched``
never back-propagates below the first selected layer nor into frozen weights and holds one timestep's
activations at a time, so a parameter subset (``params=temporal``) is faster and needs far less memory
(``benches/featurize.py``, docs/results-real-gradients.md). Options:

* ``timesteps``: the t_k. MOTIVE uses one fixed timestep; D-TRAK averages several. Each t_k has ONE
  noise draw eps_k shared by every clip, training and query alike (common randomness), seeded from the
  run seed, so clips differ only by their content.
* ``output``: ``loss`` (eps-prediction MSE) or ``dtrak`` (mean squared norm of the prediction).
* ``weighting``: ``none``; ``scalar`` (eq. 3: w_i = ||d_i||, the descriptor norm); ``mask`` (MOTIVE: the
  per-pixel flow magnitude, min-max normalised over the clip's frames and pixels with eps 1e-6, resized
  to the model's loss grid, multiplies the squared error, or the squared prediction for ``dtrak``).
* ``frame_normalize``: the 1/F factor (F frames) that keeps clips of different length comparable.
* ``params``: ``all``, ``temporal`` (the adapter's across-frame parameters) or a regular expression
  searched in parameter names.
* ``checkpoints``: the saved steps to differentiate (empty = the last); K of them give K gradient sets.
* ``contrast``: counterfactual clips whose gradients cancel appearance. With R x the clip played
  backwards and S x its middle frame repeated: ``reverse`` gives the time-odd part (g(x) - g(Rx)) / 2 (the
  frames, hence the texture, are the same both ways; the direction of motion flips); ``static`` gives
  g(x) - g(Sx); ``reverse_static`` concatenates the time-odd part with ``contrast_static_weight`` x
  ((g(x) + g(Rx)) / 2 - g(Sx)), the motion that has no direction (e.g. a random walk).
* ``regions``: the loss split into regions x regions spatial cells, one gradient per cell, concatenated,
  so that motion whose direction varies over the frame (rotation, zoom) does not cancel in weights that
  every position shares. The cells' gradients sum to the whole-frame gradient.

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
from typing import TYPE_CHECKING

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource

if TYPE_CHECKING:
    import torch

    from mwga_core.api.models import ModelAdapter
    from mwga_core.diffusion.training import TrainedModel

OUTPUTS = ("loss", "dtrak")
ENGINES = ("batched", "vmap")
#: largest relative difference from torch.func the batched engine may show on its first two clips
ENGINE_CHECK_TOLERANCE = 1e-3
WEIGHTINGS = ("none", "scalar", "mask")
CONTRASTS = ("none", "reverse", "static", "reverse_static")
REGION_SPLITS = ("loss", "position")
CONDITIONINGS = ("label", "unconditional")
MASK_EPS = 1e-6


@dataclass
class DiffusionGradientConfig(GradientConfig):
    """Which gradient of the trained model, per clip (see the module docstring)."""

    #: diffusion timesteps t_k; one shared noise draw each; the gradient is their average
    timesteps: list[int] = field(default_factory=lambda: [500])
    #: loss (eps-prediction MSE) or dtrak (mean squared norm of the prediction)
    output: str = "loss"
    #: none, scalar (eq. 3's ||d_i||) or mask (MOTIVE's per-pixel flow-magnitude mask)
    weighting: str = "mask"
    #: scale by 1/F (F = frames per clip)
    frame_normalize: bool = True
    #: all, temporal, or a regular expression searched in parameter names
    params: str = "all"
    #: checkpoint steps to differentiate; empty = the last one
    checkpoints: list[int] = field(default_factory=list)
    #: counterfactual contrast: none, reverse (the time-odd part), static, reverse_static (see the module docs)
    contrast: str = "none"
    #: weight of the (even - static) half of ``reverse_static``
    contrast_static_weight: float = 0.4
    #: split the loss into regions x regions spatial cells and concatenate their gradients (1 = whole frame)
    regions: int = 1
    #: loss (one gradient per cell's loss; any engine) or position (each layer's weight gradient summed per
    #: cell of its own output grid, from one backward; engine=batched, Conv/GroupNorm parameters)
    region_split: str = "loss"
    #: what a conditional model is given: label (each clip's class) or unconditional (the null label of a
    #: model trained with label dropout, for every clip: label-free gradients)
    conditioning: str = "label"
    #: clips per vmap chunk / batched pass (memory vs speed)
    chunk_size: int = 16
    #: bfloat16 autocast in the gradient forward pass
    bf16: bool = False
    #: per-clip gradient engine: batched (one batched forward/backward per chunk) or vmap (torch.func)
    engine: str = "batched"


def motion_mask(flows: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """MOTIVE's loss-space motion mask.

    Frame f gets the mean flow magnitude of the frame pairs it belongs to; the clip's map is min-max
    normalised over all its frames and pixels (eps 1e-6) and area-resized to ``grid``.

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


class DiffusionGradient(GradientSource):
    """Per-clip gradients of a diffusion model trained on the corpus, via torch.func."""

    uses_model = True

    def __init__(self, config: DiffusionGradientConfig) -> None:
        super().__init__(config)
        c = config
        if not c.timesteps:
            raise ConfigValueError("timesteps", list(c.timesteps), "a non-empty list of integers >= 0")
        if any(t < 0 for t in c.timesteps):
            raise ConfigValueError("timesteps", list(c.timesteps), "integers >= 0")
        if c.output not in OUTPUTS:
            raise ConfigValueError("output", c.output, f"one of {list(OUTPUTS)}")
        if c.weighting not in WEIGHTINGS:
            raise ConfigValueError("weighting", c.weighting, f"one of {list(WEIGHTINGS)}")
        if c.contrast not in CONTRASTS:
            raise ConfigValueError("contrast", c.contrast, f"one of {list(CONTRASTS)}")
        if c.contrast_static_weight < 0:
            raise ConfigValueError("contrast_static_weight", c.contrast_static_weight, "a number >= 0")
        if c.regions < 1:
            raise ConfigValueError("regions", c.regions, "an integer >= 1")
        if c.region_split not in REGION_SPLITS:
            raise ConfigValueError("region_split", c.region_split, f"one of {list(REGION_SPLITS)}")
        if c.regions > 1 and c.region_split == "position" and c.engine != "batched":
            raise ConfigValueError("region_split", c.region_split, "loss: position needs engine=batched")
        if c.conditioning not in CONDITIONINGS:
            raise ConfigValueError("conditioning", c.conditioning, f"one of {list(CONDITIONINGS)}")
        if c.chunk_size < 1:
            raise ConfigValueError("chunk_size", c.chunk_size, "an integer >= 1")
        if c.engine not in ENGINES:
            raise ConfigValueError("engine", c.engine, f"one of {list(ENGINES)}")
        if c.params not in ("all", "temporal"):
            try:
                re.compile(c.params)
            except re.error:
                raise ConfigValueError(
                    "params", c.params, "all, temporal or a valid regular expression"
                ) from None
        self.model_adapter: ModelAdapter | None = None
        self.trained: TrainedModel | None = None

    def bind_model(self, model: ModelAdapter) -> None:
        self.model_adapter = model

    # -- preparation --------------------------------------------------------------------------------

    def prepare(self, train: AnalysedClips, ctx: RunContext) -> None:
        from mwga_core.diffusion.training import load_or_train

        if self.model_adapter is None:
            raise ConfigValueError("model", None, "a model adapter (model=video_denoiser)")
        c = self.config
        if c.weighting != "none" and train.flows is None and c.weighting == "mask":
            raise ConfigValueError("weighting", c.weighting, "none or scalar: this method computes no flow")
        if c.weighting == "scalar" and train.descriptors is None:
            raise ConfigValueError(
                "weighting", c.weighting, "none or mask: this method computes no descriptor"
            )
        if max(c.timesteps) >= self.model_adapter.config.diffusion_steps:
            raise ConfigValueError(
                "timesteps",
                list(c.timesteps),
                f"integers in [0, {self.model_adapter.config.diffusion_steps})",
            )
        num_classes = max(int(train.clips.labels.max()) + 1, 1)
        model_config = self.model_adapter.config
        if c.conditioning == "unconditional" and not (
            model_config.conditional and model_config.training.label_dropout > 0
        ):
            raise ConfigValueError(
                "conditioning",
                c.conditioning,
                "label, or a model with a null label (model.conditional=true, model.training.label_dropout > 0)",
            )
        if model_config.conditional and int(train.clips.labels.max()) < 0:
            raise ConfigValueError(
                "model.conditional",
                True,
                "false: the training clips have no labels to condition on (or give the dataset labels)",
            )
        self.trained = load_or_train(self.model_adapter, train.clips, num_classes, ctx)
        missing = [s for s in c.checkpoints if s not in self.trained.steps]
        if missing:
            raise ConfigValueError(
                "checkpoints", list(c.checkpoints), f"saved steps among {self.trained.steps}"
            )

    def checkpoint_id(self) -> str | None:
        """The trained model's cache key and the differentiated checkpoint steps."""
        trained = self._require_trained()
        steps = list(self.config.checkpoints) or [trained.steps[-1]]
        return f"{trained.info['key']}@" + ",".join(str(s) for s in steps)

    def generate_queries(
        self, class_names: list[str], per_class: int, ctx: RunContext, context: ClipSet | None = None
    ) -> ClipSet:
        from mwga_core.diffusion.model_check import sample_per_class

        trained = self._require_trained()
        if not trained.adapter.config.conditional:
            raise ConfigValueError(
                "query",
                "generated",
                "heldout: an unconditional model (model.conditional=false) has no class to generate; "
                "method=ours_generative trains one that can",
            )
        samples = sample_per_class(trained, per_class, ctx, purpose="queries", context=context)
        ids = [f"generated-{class_names[label]}-{j % per_class}" for j, label in enumerate(samples.labels)]
        return ClipSet(frames=samples.frames, labels=samples.labels, ids=ids)

    def _require_trained(self) -> TrainedModel:
        if self.trained is None:
            raise RuntimeError("DiffusionGradient.prepare() must run before gradients or samples")
        return self.trained

    def selected_parameter_names(self, module: torch.nn.Module) -> list[str]:
        """The parameter names ``params`` selects, in the module's order."""
        names = [name for name, _ in module.named_parameters()]
        if self.config.params == "all":
            chosen = names
        elif self.config.params == "temporal":
            temporal = set(self.model_adapter.temporal_parameter_names(module))
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
        import torch

        trained = self._require_trained()
        steps = list(self.config.checkpoints) or [trained.steps[-1]]
        modules = [trained.module(step, device=ctx.device) for step in steps]
        weights = self._loss_weights(clips, trained)
        scale = self._clip_scales(clips)
        x0_all = trained.adapter.encode(clips.clips.frames)
        if self.config.conditioning == "unconditional":
            labels_all = torch.full((len(clips),), trained.null_label, dtype=torch.int64)
        else:
            labels_all = torch.as_tensor(clips.clips.labels, dtype=torch.int64).clamp(min=0)
        per_step_grad = [self._per_clip_grad_fn(module, ctx) for module in modules]
        if self.config.region_split == "loss":
            per_step_grad = [self._regional(fn, trained) for fn in per_step_grad]
        block = max(self.config.chunk_size * 4, 1)
        for start in range(0, len(clips), block):
            index = np.arange(start, min(start + block, len(clips)))
            x0 = x0_all[index].to(ctx.device)
            labels = labels_all[index].to(ctx.device)
            weight = None if weights is None else weights[index].to(ctx.device)
            grads = torch.stack([self._contrasted(fn, x0, labels, weight) for fn in per_step_grad])
            grads.mul_(torch.as_tensor(scale[index], dtype=grads.dtype, device=grads.device)[None, :, None])
            yield GradientChunk(indices=index, grads=grads.float())

    def _regional(self, grad_fn, trained: TrainedModel):
        """``grad_fn`` with the loss split into ``regions`` x ``regions`` cells, gradients concatenated."""
        import torch
        from mwga_plugins.gradients.per_sample import grid_cells

        if self.config.regions == 1:
            return grad_fn
        frames, height, width = trained.adapter.loss_grid(trained.clip_shape)
        masks = [
            cell.expand(frames, height, width) for cell in grid_cells(height, width, self.config.regions)
        ]

        def compute(x0: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
            base = torch.ones((x0.shape[0], 1, 1, 1, 1), device=x0.device) if weight is None else weight
            return torch.cat([grad_fn(x0, labels, base * mask.to(x0.device)) for mask in masks], dim=1)

        return compute

    def _contrasted(self, grad_fn, x0: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None):
        """Per-clip gradients (n, D) after the configured counterfactual contrast.

        Time is dim 2 of x0 (n, C, T, H, W) and of the mask weight (n, 1, T', H', W').
        """
        import torch

        contrast = self.config.contrast
        g = grad_fn(x0, labels, weight)
        if contrast == "none":
            return g
        parts = []
        if contrast in ("reverse", "reverse_static"):
            reversed_weight = None if weight is None else weight.flip(2)
            g_reversed = grad_fn(x0.flip(2), labels, reversed_weight)
            parts.append((g - g_reversed) / 2)
        if contrast in ("static", "reverse_static"):
            middle = x0.shape[2] // 2
            still = x0[:, :, middle : middle + 1].expand_as(x0).contiguous()
            g_static = grad_fn(still, labels, weight)
            if contrast == "static":
                parts.append(g - g_static)
            else:
                even = (g + g_reversed) / 2
                parts.append(self.config.contrast_static_weight * (even - g_static))
        return torch.cat(parts, dim=1)

    def _clip_scales(self, clips: AnalysedClips) -> np.ndarray:
        scale = np.ones(len(clips), dtype=np.float64)
        if self.config.weighting == "scalar":
            scale *= np.linalg.norm(clips.descriptors.astype(np.float64), axis=1)
        if self.config.frame_normalize:
            scale /= clips.clips.num_frames
        return scale.astype(np.float32)

    def _loss_weights(self, clips: AnalysedClips, trained: TrainedModel) -> torch.Tensor | None:
        import torch

        if self.config.weighting != "mask":
            return None
        if clips.flows is None:
            raise ConfigValueError("gradient.weighting", "mask", "none or scalar: these clips have no flow")
        grid = trained.adapter.loss_grid(trained.clip_shape)
        return torch.from_numpy(motion_mask(clips.flows, grid))[:, None]  # (N, 1, T', H', W')

    def _shared_noise(self, trained: TrainedModel, ctx: RunContext) -> list[torch.Tensor]:
        import torch

        t, h, w, c = trained.clip_shape
        return [
            torch.randn(
                (c, t, h, w), generator=torch.Generator().manual_seed(ctx.seed_for("diffusion-noise", k, ts))
            )
            for k, ts in enumerate(self.config.timesteps)
        ]

    def _per_clip_grad_fn(self, module: torch.nn.Module, ctx: RunContext):
        """A function (x0 (n,C,T,H,W), labels (n,), weight or None) -> (n, D) per-clip gradients."""
        import torch
        from mwga_plugins.gradients.per_sample import per_sample_gradients
        from torch.func import functional_call, grad, vmap

        trained = self._require_trained()
        adapter, c = trained.adapter, self.config
        selected = self.selected_parameter_names(module)
        chosen = set(selected)
        params = {n: p.detach() for n, p in module.named_parameters() if n in chosen}
        frozen = {n: p.detach() for n, p in module.named_parameters() if n not in chosen}
        frozen.update(dict(module.named_buffers()))
        noises = [n.to(ctx.device) for n in self._shared_noise(trained, ctx)]
        timesteps = [torch.tensor([t], dtype=torch.int64, device=ctx.device) for t in c.timesteps]
        conditional = adapter.config.conditional
        device_type = torch.device(ctx.device).type

        def autocast(enabled: bool = c.bf16):
            return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)

        every_step = range(len(timesteps))

        def per_clip_objective(forward, x0, labels, weight, steps=every_step) -> torch.Tensor:
            """(n,) objectives of n clips: the timesteps ``steps``' share of the mean over timesteps."""
            total = 0.0
            for k in steps:
                t_n, noise = timesteps[k].expand(x0.shape[0]), noises[k]
                x_t = adapter.add_noise(x0, t_n, noise[None])
                prediction = forward(x_t, t_n, labels if conditional else None)
                if c.output == "loss":
                    value = adapter.per_example_loss(prediction, noise[None], weight)
                else:
                    masked = prediction if weight is None else prediction.float() * weight.sqrt()
                    value = adapter.dtrak_output(masked)
                total = total + value
            return total / len(timesteps)

        def compute_vmap(x0, labels, weight, cast=autocast) -> torch.Tensor:
            def objective(p: dict, x0: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None):
                def forward(*args):
                    with cast():
                        return functional_call(module, (p, frozen), args)

                w = None if weight is None else weight[None]
                return per_clip_objective(forward, x0[None], label[None], w).sum()

            in_dims = (None, 0, 0, None if weight is None else 0)
            per_clip = vmap(grad(objective), in_dims=in_dims, chunk_size=c.chunk_size)(
                params, x0, labels, weight
            )
            return torch.cat([per_clip[name].reshape(x0.shape[0], -1) for name in selected], dim=1).detach()

        position_cells = c.regions if c.region_split == "position" else 1
        sizes = [params[name].numel() * position_cells**2 for name in selected]

        def compute_batched(x0, labels, weight, cast=autocast) -> torch.Tensor:
            # One backward per (chunk, timestep) keeps one timestep's activations alive at a time; each
            # chunk's gradients go straight into their rows of the (n, D) result.
            out = torch.zeros((x0.shape[0], sum(sizes)), dtype=torch.float32, device=x0.device)
            for first in range(0, x0.shape[0], c.chunk_size):
                rows = slice(first, first + c.chunk_size)
                w = None if weight is None else weight[rows]
                for k in range(len(timesteps)):

                    def losses(forward, rows=rows, w=w, k=k):
                        return per_clip_objective(forward, x0[rows], labels[rows], w, steps=[k])

                    grads = per_sample_gradients(
                        module, params, frozen, losses, x0[rows].shape[0], cast, position_cells
                    )
                    for name, column in zip(selected, out[rows].split(sizes, dim=1), strict=True):
                        column += grads[name].reshape(column.shape)
            return out

        checked = c.engine != "batched"

        def compute(x0: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
            nonlocal checked
            if not checked:
                # The batched engine relies on the model keeping samples apart (see .per_sample); check
                # that once on two clips against torch.func, in float32, rather than trust it silently.
                k = min(2, x0.shape[0])
                w = None if weight is None else weight[:k]
                fast = compute_batched(x0[:k], labels[:k], w, lambda: autocast(False))
                if position_cells > 1:  # the cells of each parameter sum to its whole gradient
                    parts = fast.split(sizes, dim=1)
                    fast = torch.cat([part.reshape(k, position_cells**2, -1).sum(1) for part in parts], 1)
                exact = compute_vmap(x0[:k], labels[:k], w, lambda: autocast(False))
                error = float(((fast - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-30)).max())
                if error > ENGINE_CHECK_TOLERANCE:
                    raise ConfigValueError(
                        "gradient.engine",
                        "batched",
                        f"vmap: on this model the batched gradients differ from torch.func's by {error:.2g} "
                        "(relative), so some layer mixes samples or takes its batch elsewhere than dim 0",
                    )
                checked = True
            return (compute_batched if c.engine == "batched" else compute_vmap)(x0, labels, weight)

        return compute


@hookimpl
def mwga_register_gradient_sources(register):
    register(
        "diffusion",
        DiffusionGradient,
        DiffusionGradientConfig,
        description="per-clip gradients of a video diffusion model trained on the corpus (torch.func)",
    )
