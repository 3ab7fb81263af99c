"""Model adapters: how mwga builds, loads, noises, scores and samples a video diffusion model.

An adapter wraps one kind of torch denoiser so the ``model`` stage (:mod:`mwga_core.pipeline.model_stage`,
which trains with :mod:`mwga_core.diffusion.training`), the ``diffusion`` gradient source and query
generation can use it without knowing its architecture. Any torch model can be attributed by registering
an adapter through the ``mwga_register_models`` hook (config group ``model``);
``docs/hooks/mwga_register_models.md`` shows a complete example.

The contract, in model space (``x`` is a clip as the model sees it, channels first):

* :meth:`ModelAdapter.build_fresh` returns a freshly initialised ``nn.Module`` to train, whose
  ``forward(x_t, t, labels)`` predicts the noise ``eps`` (same shape as ``x_t``); ``labels`` is None for an
  unconditional model. Training is a capability: an adapter that only loads trained weights sets
  :attr:`ModelAdapter.can_train` to False and leaves ``build_fresh`` out.
* :meth:`ModelAdapter.load` returns a *trained* module holding given weights (a state dict);
  :meth:`ModelAdapter.pretrained` may hand the ``model`` stage weights that come with the adapter
  (:class:`PretrainedWeights`), so that nothing is trained. Either way the stage's result is a
  :class:`~mwga_core.api.trained_model.TrainedModel`, whose ``module(step)`` calls ``load``.
  With ``model.checkpoint`` set, the default :meth:`ModelAdapter.pretrained` reads that file (safetensors,
  or a torch state dict read with ``weights_only=True``), so any adapter can attribute a model trained
  elsewhere.
* :meth:`ModelAdapter.encode` / :meth:`ModelAdapter.decode` convert between frames (N, T, H, W, C) in
  [0, 1] and model space (N, C, T, H, W) in [-1, 1] (:meth:`ModelAdapter.model_shape`; a latent model's
  VAE changes C, T, H and W). A model whose encoder does not commute with playing the clip backwards
  sets :attr:`ModelAdapter.time_reversal_commutes` to False, so contrasts encode reversed frames.
* The denoiser may take per-clip conditioning (text embeddings): :meth:`ModelAdapter.condition` gives
  keyword tensors, one row per clip, that are passed on as ``forward(x_t, t, labels, **condition)``.
* :meth:`ModelAdapter.add_noise`, :meth:`ModelAdapter.target`, :meth:`ModelAdapter.per_example_loss`,
  :meth:`ModelAdapter.training_loss`, :meth:`ModelAdapter.dtrak_output` and :meth:`ModelAdapter.sample`
  have DDPM / DDIM eps-prediction defaults, with the shared options of :class:`ModelConfig`:
  classifier-free guidance (``training.label_dropout`` adds a null label, the last class-embedding row;
  ``guidance`` mixes it into sampling) and image-to-video (``context_frames`` clean leading frames, kept
  out of the loss). A family with another objective (v-prediction, flow matching) overrides ``add_noise``
  and ``target``.

Built-in implementations (``plugins/models``):
    video_denoiser: a small factorised space/time denoiser on a patchified latent grid, CPU-first.
    diffusers: your own diffusers pipeline or denoiser folder (Wan, CogVideoX, UNet3D, AnimateDiff,
        LTX-Video, HunyuanVideo, Mochi) with its VAE, objective and text encoder (docs/own-model.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Union

import numpy as np

from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError
from mwga_core.config.checks import above, at_least, check_fields, one_of, satisfies
from mwga_core.diffusion.schedules import SCHEDULES, NoiseSchedule, add_noise, ddim_sample, make_schedule
from mwga_core.plugin_host.registry import ComponentConfig

if TYPE_CHECKING:
    import torch

    from mwga_core.api.clips import ClipSet

TRAINING_OBJECTIVES = ("eps", "v")
#: floor of alpha_bar_t in the v objective's 1 / alpha_bar_t weight (the cosine schedule's last step is ~0)
V_OBJECTIVE_FLOOR = 1e-4
#: one checkpoint's weights: a safetensors file, or a state dict in memory
Weights = Union[Path, Mapping[str, "torch.Tensor"]]  # noqa: UP007 (a runtime alias with a string member)
#: mismatching keys an error message lists at most
SHOWN_KEYS = 5
#: model config fields that do not shape the module, left out of a checkpoint file's key
NOT_ARCHITECTURE_FIELDS = ("training", "checkpoint", "sample_steps", "guidance")
_UNIT_INTERVAL = satisfies(lambda value: 0 <= value < 1, "a number in [0, 1)")


@dataclass
class TrainingConfig:
    """How the trainer fits the model (AdamW on the eps-prediction loss)."""

    steps: int = field(default=1200, metadata=at_least(1))
    batch_size: int = field(default=16, metadata=at_least(1))
    lr: float = field(default=3e-3, metadata=above(0))
    weight_decay: float = 0.0
    #: linear learning-rate warm-up steps, then cosine decay to 10% of lr
    warmup: int = field(default=50, metadata=at_least(0))
    #: training steps after which a checkpoint is saved (the last step is always saved)
    checkpoints: list[int] = field(default_factory=lambda: [400, 800])
    #: bfloat16 autocast for the forward pass (AMX on CPU); weights and optimiser stay float32
    bf16: bool = True
    #: decay of the exponential moving average of the weights that checkpoints store (0 = raw weights)
    ema: float = field(default=0.99, metadata=_UNIT_INTERVAL)
    #: classifier-free guidance training: this fraction of examples is trained with the null label (an
    #: extra class row), so one model predicts both conditionally and unconditionally (conditional only)
    label_dropout: float = field(default=0.0, metadata=_UNIT_INTERVAL)
    #: what the training loss measures: eps (the eps-prediction MSE, which weights timestep t by
    #: alpha_bar_t relative to v and so hardly trains the high-noise steps that set a sample's layout and
    #: motion) or v (the v-prediction MSE: eps MSE / alpha_bar_t, with alpha_bar_t floored at 1e-4)
    objective: str = field(default="eps", metadata=one_of(*TRAINING_OBJECTIVES))


@dataclass
class ModelConfig(ComponentConfig):
    """Base config for model adapters: the noise schedule, sampling and training."""

    #: condition on the motion class (a stand-in for a text prompt)
    conditional: bool = True
    #: beta schedule: linear or cosine
    schedule: str = field(default="cosine", metadata=one_of(*SCHEDULES))
    #: T, the number of diffusion steps
    diffusion_steps: int = field(default=1000, metadata=at_least(2))
    #: DDIM steps when sampling
    sample_steps: int = 25
    #: image-to-video conditioning: the first ``context_frames`` frames are given clean (never noised, not
    #: in the loss) and the model generates the rest; 0 = the model generates every frame
    context_frames: int = field(default=0, metadata=at_least(0))
    #: classifier-free guidance scale w when sampling a class: eps = eps(null) + w (eps(class) -
    #: eps(null)); 1 = plain conditional sampling; other values need training.label_dropout > 0
    guidance: float = field(default=1.0, metadata=at_least(0))
    training: TrainingConfig = field(default_factory=TrainingConfig)
    #: trained weights to attribute instead of training: a safetensors file or a torch state dict
    #: (read with weights_only=True); the model store key then hashes the file's content. "" = train
    checkpoint: str = ""


class ModelAdapter:
    """Builds a denoiser and says how to noise, score and sample it. See the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        check_fields(config)
        try:
            check_fields(config.training)
        except ConfigValueError as error:
            raise error.under("training") from None
        self.config = config
        c, tc = config, config.training
        # rules that relate several fields (each field's own range is declared in its metadata)
        if not 1 <= c.sample_steps <= c.diffusion_steps:
            raise ConfigValueError("sample_steps", c.sample_steps, f"an integer in [1, {c.diffusion_steps}]")
        if tc.label_dropout > 0 and not c.conditional:
            raise ConfigValueError(
                "training.label_dropout", tc.label_dropout, "0 for an unconditional model (conditional=false)"
            )
        if c.guidance != 1 and tc.label_dropout == 0:
            raise ConfigValueError(
                "guidance", c.guidance, "1 unless training.label_dropout > 0 (guidance needs the null label)"
            )
        if any(not 1 <= s <= tc.steps for s in tc.checkpoints):
            raise ConfigValueError("training.checkpoints", list(tc.checkpoints), f"steps in [1, {tc.steps}]")
        self._schedule: NoiseSchedule | None = None

    # -- architecture: build to train, load trained --------------------------------------------------

    #: whether mwga can train this adapter's denoiser, i.e. :meth:`build_fresh` is implemented. The
    #: ``model`` stage trains one when :meth:`pretrained` gives no weights, and refuses with
    #: :class:`ModelCannotTrainError` when this is False.
    can_train: ClassVar[bool] = True

    def build_fresh(self, clip_shape: tuple[int, int, int, int], num_classes: int) -> torch.nn.Module:
        """A freshly initialised denoiser to train, for clips of ``clip_shape`` = (T, H, W, C).

        The module's ``forward(x_t, t, labels)`` takes x_t (B, C, T, H, W), t (B,) int64 and labels
        (B,) int64 or None, and returns eps (B, C, T, H, W). Initialise from torch's global RNG; the
        trainer seeds it. Adapters that cannot train (:attr:`can_train` False) leave this out.
        """
        raise ModelCannotTrainError(self)

    def load(
        self, weights: Mapping[str, torch.Tensor], clip_shape: tuple[int, int, int, int], num_classes: int
    ) -> torch.nn.Module:
        """A trained denoiser holding ``weights`` (a state dict), for clips of ``clip_shape``.

        Default: :meth:`build_fresh`'s architecture (built without touching the caller's random numbers)
        with ``weights`` loaded; they must hold every parameter and buffer of the module with its shape
        (:func:`load_weights` names the first that do not). An adapter whose architecture comes with its
        weights (a pretrained folder) overrides this.
        """
        import torch

        with torch.random.fork_rng(devices=[]):
            module = self.build_fresh(clip_shape, num_classes)
        load_weights(module, weights, origin=f"weights for {type(self).__name__}")
        return module

    def pretrained(self, clip_shape: tuple[int, int, int, int], num_classes: int) -> PretrainedWeights | None:
        """Trained weights that come with this adapter, or None.

        With weights, the ``model`` stage uses them and trains nothing. Default: the file ``checkpoint``
        names (:func:`~mwga_core.api.checkpoints.read_checkpoint`, checked against this architecture
        here, so a file that does not fit is named before any work), else None (mwga trains the model
        on the training clips, which needs :attr:`can_train`).
        """
        if not self.config.checkpoint:
            return None
        from mwga_core.storage.keys import digest, plain
        from mwga_core.storage.weights_file import check_weights_path, content_hash, read_weights

        path = check_weights_path(self.config.checkpoint)
        weights = read_weights(path)
        try:  # build it once now, so a file that does not fit is named before any work
            self.load(weights_in_memory(weights), clip_shape, self.embedding_classes(num_classes))
        except DataError as error:
            raise DataError(f"model.checkpoint={path}: {error}") from None
        architecture = {k: v for k, v in plain(self.config).items() if k not in NOT_ARCHITECTURE_FIELDS}
        key = "checkpoint-" + digest(
            {"adapter": type(self).__qualname__, "config": architecture, "weights": content_hash(path)}
        )
        return PretrainedWeights(key=key, checkpoints={0: weights})

    def embedding_classes(self, num_classes: int) -> int:
        """Rows of the class embedding to build: the classes, plus the null label with label dropout."""
        return num_classes + 1 if self.config.training.label_dropout > 0 else num_classes

    def null_label(self, num_classes: int) -> int | None:
        """The label that means "no class" (the last embedding row), or None without label dropout."""
        return num_classes if self.config.training.label_dropout > 0 else None

    def temporal_parameter_names(self, module: torch.nn.Module) -> list[str]:
        """Names of the parameters that mix information across frames (``params=temporal``)."""
        return [name for name, _ in module.named_parameters() if "temporal" in name]

    # -- data ---------------------------------------------------------------------------------------

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames to model space.

        Shape:
            frames: (N, T, H, W, C) float in [0, 1]; returns (N, C, T, H, W) float32 in [-1, 1].
        """
        import torch

        x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
        return (x.permute(0, 4, 1, 2, 3) * 2 - 1).contiguous()

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Model space back to frames (N, T, H, W, C) float32 in [0, 1]."""
        frames = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)
        return frames.contiguous().numpy()

    def model_shape(self, clip_shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip in model space, for clips of ``clip_shape`` = (T, H, W, C).

        Pixel-space models: the frames, channels first. A latent model returns its latent grid.
        """
        t, h, w, c = clip_shape
        return c, t, h, w

    def loss_grid(self, clip_shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
        """(T, H, W) of the loss a per-pixel weight mask multiplies: the model-space grid."""
        return self.model_shape(clip_shape)[1:]

    def encoder_key(self) -> str | None:
        """A name for an expensive encoder (a VAE: e.g. its weights' hash), so that encoded clips are
        cached (:func:`~mwga_core.diffusion.model_inputs.encode_clips`); None (default) for an encoder
        that costs nothing, which is run every time."""
        return None

    #: whether encoding commutes with playing the clip backwards (and with holding it still), i.e.
    #: ``encode(frames[:, ::-1]) == encode(frames).flip(2)``. True in pixel space; False for a latent
    #: model whose (causal) video VAE does not, so contrasts encode the counterfactual frames themselves.
    time_reversal_commutes: ClassVar[bool] = True

    def condition(self, clips: ClipSet) -> dict[str, torch.Tensor] | None:
        """Per-clip conditioning keyword inputs of the denoiser (e.g. text embeddings), or None.

        Each tensor has one row per clip of ``clips``, in order (CPU); gradient sources slice them with
        the clips and pass them as ``forward(x_t, t, labels, **condition)``. Default: None (the only
        condition is the class label, when ``conditional``).
        """
        return None

    # -- diffusion ----------------------------------------------------------------------------------

    @property
    def schedule(self) -> NoiseSchedule:
        if self._schedule is None:
            self._schedule = make_schedule(self.config.schedule, self.config.diffusion_steps)
        return self._schedule

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The model's noisy input: DDPM forward noising, with the ``context_frames`` first frames clean.

        Shape: x0, noise (B, C, T, H, W); t (B,) or 0-d int64; returns (B, C, T, H, W).
        """
        x_t = add_noise(self.schedule, x0, t, noise)
        return self.with_context(x_t, x0[:, :, : self.config.context_frames])

    def with_context(self, x_t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x_t`` with its first k frames replaced by the clean ``context`` (B, C, k, H, W).

        k = ``context_frames``; with k = 0, ``x_t`` itself (``context`` is ignored).
        """
        import torch

        k = self.config.context_frames
        if k == 0:
            return x_t
        return torch.cat([context.to(x_t.dtype), x_t[:, :, k:]], dim=2)

    def _generated_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The frames the model generates (all but the context frames), for a tensor with time at dim 2."""
        k = self.config.context_frames
        return x[:, :, k:] if k and x.ndim >= 3 and x.shape[2] > 1 else x

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser's prediction is regressed on at ``x_t = add_noise(x0, t, noise)``.

        Default: the noise (eps-prediction); a v-prediction or flow-matching family overrides it.
        Shape: x0 (B, C, T, H, W), noise broadcastable to it, t (B,) -> broadcastable to (B, C, T, H, W).
        """
        return noise

    def per_example_loss(
        self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE of the prediction against its :meth:`target` per example over the generated frames,
        optionally weighted per element of the loss grid.

        Shape:
            prediction, target: (B, C, T, H, W).
            weight: None or broadcastable to (B, C, T, H, W), e.g. (B, 1, T, H, W) (MOTIVE's motion mask).
            returns: (B,), the mean over every other dimension of ``weight * (prediction - target)^2``,
            leaving out the ``context_frames`` first frames.
        """
        error = (self._generated_frames(prediction).float() - self._generated_frames(target).float()) ** 2
        if weight is not None:
            error = error * self._generated_frames(weight)
        return error.flatten(1).mean(dim=1)

    def training_loss(self, prediction: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The per-example training loss of ``training.objective`` at timesteps ``t`` (B,). -> (B,).

        ``v``: since eps = sqrt(ab) v + sqrt(1 - ab) x_t, the eps error is sqrt(ab_t) times the v error,
        so the v MSE is the eps MSE / ab_t.
        """
        loss = self.per_example_loss(prediction, target)
        if self.config.training.objective == "v":
            alpha_bar = self.schedule.alpha_bars.to(loss.device)[t].clamp_min(V_OBJECTIVE_FLOOR)
            loss = loss / alpha_bar.to(loss.dtype)
        return loss

    def dtrak_output(self, prediction: torch.Tensor) -> torch.Tensor:
        """D-TRAK's output function, the mean squared norm of the prediction's generated frames. -> (B,)."""
        return (self._generated_frames(prediction).float() ** 2).flatten(1).mean(dim=1)

    def sample(
        self,
        module: torch.nn.Module,
        labels: torch.Tensor | None,
        count: int,
        clip_shape: tuple[int, int, int, int],
        seed: int,
        device: str = "cpu",
        null_label: int | None = None,
        context: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Class-conditional DDIM samples, as frames, with classifier-free guidance when configured.

        Args:
            labels: (count,) int64 classes to condition on, or None (unconditional).
            clip_shape: (T, H, W, C).
            seed: seeds the starting noise.
            null_label: the "no class" label (see :meth:`null_label`); needed when ``guidance`` != 1.
            context: (count, C, k, H, W) clean first frames in model space, k = ``context_frames``;
                needed when k > 0 (image-to-video).

        Returns:
            (count, T, H, W, C) float32 frames in [0, 1].
        """
        import torch

        c, t, h, w = self.model_shape(clip_shape)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((count, c, t, h, w), generator=generator).to(device)
        label_tensor = None if labels is None else labels.to(device)
        guidance = self.config.guidance
        guided = label_tensor is not None and guidance != 1
        if guided and null_label is None:
            raise ConfigValueError("guidance", guidance, "1: this model was trained without a null label")
        k = self.config.context_frames
        if k and (context is None or tuple(context.shape) != (count, c, k, h, w)):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context_frames={k}: pass context of shape {(count, c, k, h, w)}, got {got}")
        if k:
            context = context.to(device)
        module.eval()

        def predict(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            x_t = self.with_context(x_t, context)
            if not guided:
                return module(x_t, step, label_tensor)
            # One forward for both halves: the class-conditional and the null-label prediction.
            both = module(
                torch.cat([x_t, x_t]),
                torch.cat([step, step]),
                torch.cat([label_tensor, torch.full_like(label_tensor, null_label)]),
            )
            conditional, unconditional = both.chunk(2)
            return unconditional + guidance * (conditional - unconditional)

        with torch.no_grad():
            x0 = ddim_sample(self.schedule, predict, noise, self.config.sample_steps)
        return self.decode(self.with_context(x0, context))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


@dataclass(frozen=True)
class PretrainedWeights:
    """Trained weights that come with an adapter (:meth:`ModelAdapter.pretrained`).

    Attributes:
        key: names these weights (e.g. a hash of the checkpoint file's content); gradient sources build
            their ``checkpoint_id`` from it.
        checkpoints: step -> that checkpoint's weights (one entry for a single trained model).
    """

    key: str
    checkpoints: dict[int, Weights]


class ModelCannotTrainError(MwgaUserError):
    """The run needs a model trained on the corpus, but the adapter can only load trained weights."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        super().__init__(
            f"model adapter {type(adapter).__name__} cannot train a model (it only loads trained weights, "
            "can_train=False) and it was given no trained weights: point its config at a trained model or "
            "choose an adapter that trains, e.g. model=video_denoiser."
        )


def weights_in_memory(weights: Weights) -> Mapping[str, torch.Tensor]:
    """A state dict: ``weights`` itself, or the safetensors file it names read into memory."""
    if isinstance(weights, Path):
        from safetensors.torch import load_file

        return load_file(str(weights))
    return weights


def weights_mismatch(module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``weights`` from loading strictly into ``module``: up to :data:`SHOWN_KEYS` missing
    keys, unexpected keys and keys whose shape differs, one string per kind; [] when they fit."""
    expected = module.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [
        f"{name} {tuple(weights[name].shape)} (module: {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in weights and tuple(weights[name].shape) != tuple(tensor.shape)
    ]
    return [
        f"{label}: {', '.join(names[:SHOWN_KEYS])}{' ...' if len(names) > SHOWN_KEYS else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
        if names
    ]


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load ``weights`` into ``module`` (strict), or raise a :class:`DataError` naming what does not fit.

    Args:
        origin: what the weights are, for the message (a file name, ``"weights for VideoDenoiserAdapter"``).

    The message lists up to :data:`SHOWN_KEYS` missing keys, unexpected keys and keys whose shape differs.
    """
    problems = weights_mismatch(module, weights)
    if problems:
        raise DataError(f"{origin} do not fit {type(module).__name__}: " + "; ".join(problems) + ".")
    module.load_state_dict(dict(weights))
