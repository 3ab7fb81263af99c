"""``model=diffusers``: attribute a video diffusion model saved with diffusers' ``save_pretrained``.

The adapter reads ``model.path`` (:mod:`.folder`), picks the denoiser's family (:mod:`.families`), its
objective from the scheduler config (:mod:`.objectives`), its VAE (:mod:`.latents`; none: pixel space)
and its text conditioning (:mod:`.conditioning`), and hands mwga a module
``forward(x_t, t, labels, **condition)`` that maps mwga's timestep index t to the family's timestep,
fills in the shared inputs and returns the family's prediction. With a folder it only loads trained
weights: the folder's own, or ``model.checkpoint``'s (a fine-tuned denoiser), whose content names the
model (:meth:`DiffusersAdapter.pretrained`). With ``model.architecture`` instead (:mod:`.architectures`)
there is no folder: mwga builds a small denoiser of that architecture and trains it on the corpus
(``can_train`` is True), in pixel space, with the family's objective and an all-zero text embedding.

``diffusers`` (and ``transformers`` for text encoders) are imported when a model is loaded, never when
this module is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from mwga_plugins.models.diffusers.architectures import (
    ARCHITECTURE_NAMES,
    ARCHITECTURE_TEXT_LENGTH,
    architecture_folder,
    build_fresh_denoiser,
    check_architecture_fields,
    resolve_architecture,
    unwrapped,
)
from mwga_plugins.models.diffusers.conditioning import TextConditioning
from mwga_plugins.models.diffusers.families import SharedInputs, family_of
from mwga_plugins.models.diffusers.folder import ModelFolder, weight_files
from mwga_plugins.models.diffusers.latents import FRAME_POLICIES, LatentCodec, pixels_to_model
from mwga_plugins.models.diffusers.objectives import OBJECTIVES, make_objective

from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError
from mwga_core.api.models import ModelAdapter, ModelConfig, PretrainedWeights, weights_mismatch
from mwga_core.config.checks import above, at_least, one_of

if TYPE_CHECKING:
    import torch

    from mwga_core.api.clips import ClipSet

ENCODER_DEVICES = ("auto", "cpu", "cuda")
#: ``model.space``: latent with the folder's VAE when it has one (auto), latent only (latent), or pixels
SPACES = ("auto", "latent", "pixel")


@dataclass
class DiffusersModelConfig(ModelConfig):
    """A diffusers pipeline or denoiser folder to attribute (see docs/own-model.md)."""

    #: text conditions the model, not class labels: must stay false
    conditional: bool = False
    #: the folder save_pretrained wrote: a pipeline (transformer/ or unet/, vae/, scheduler/, text_encoder/)
    #: or a bare denoiser
    path: str = ""
    #: auto (from the scheduler config), eps, v, flow or flow_inverted (Mochi)
    objective: str = field(default="auto", metadata=one_of(*OBJECTIVES))
    #: CSV clip,caption encoded with the pipeline's text encoder ("" = every clip gets ``prompt``)
    captions: str = ""
    #: safetensors of precomputed prompt embeddings keyed by clip id (instead of captions)
    embeddings: str = ""
    #: the caption of clips without one ("" = the empty prompt); mwga attribute --caption sets it
    prompt: str = ""
    #: text tokens per prompt; 0 = the pipeline's default (CogVideoX: its max_text_seq_length)
    text_length: int = field(default=0, metadata=at_least(0))
    #: auto (the VAE's latent space when the folder has vae/, else pixels), latent (a folder without
    #: vae/ is an error) or pixel (the VAE is not used)
    space: str = field(default="auto", metadata=one_of(*SPACES))
    #: exact (refuse a frame count the VAE cannot encode) or trim (drop the last frames)
    frames: str = field(default="exact", metadata=one_of(*FRAME_POLICIES))
    #: clips the VAE encodes at a time
    vae_batch: int = field(default=4, metadata=at_least(1))
    #: where the VAE and the text encoder run: auto (cuda when available), cpu or cuda
    encoder_device: str = field(default="auto", metadata=one_of(*ENCODER_DEVICES))
    #: HunyuanVideo's embedded guidance scale (its denoiser gets 1000 x it)
    embedded_guidance: float = field(default=6.0, metadata=at_least(0))
    #: LTX-Video's frame-rate micro-condition (its rope scale)
    frame_rate: float = field(default=25.0, metadata=above(0))
    #: a denoiser architecture for mwga to build and train on the corpus, with no folder ("wan"); "" =
    #: load model.path
    architecture: str = field(default="", metadata=one_of(*ARCHITECTURE_NAMES))
    #: from_config arguments of the architecture's class that replace its tiny defaults
    #: (e.g. {num_layers: 4, ffn_dim: 128}); with ``architecture`` only
    architecture_config: dict[str, Any] = field(default_factory=dict)
    #: the flow schedule's shift of a trained architecture: sigma_t = s u / (1 + (s - 1) u),
    #: u = (t + 1) / N; 1 = sigma uniform (with ``architecture`` only; a folder's scheduler decides)
    flow_shift: float = field(default=1.0, metadata=above(0))


class DiffusersAdapter(ModelAdapter):
    """A diffusers video denoiser as a model adapter (see the module docstring)."""

    can_train = False

    def __init__(self, config: DiffusersModelConfig) -> None:
        super().__init__(config)
        if importlib.util.find_spec("diffusers") is None:
            raise MwgaUserError('model=diffusers needs the diffusers extra: pip install "mwga[diffusers]"')
        if config.conditional:
            raise ConfigValueError("conditional", True, "false: a diffusers model is conditioned on text")
        if config.context_frames:
            raise ConfigValueError("context_frames", config.context_frames, "0 for model=diffusers")
        check_architecture_fields(config)
        text_length = config.text_length
        if config.architecture:
            # the adapter's config holds the whole architecture, so the model store key hashes all of it
            resolved = resolve_architecture(config.architecture, config.architecture_config)
            self.config = config = replace(config, architecture_config=resolved)
            self.folder = architecture_folder(config.architecture, resolved, config.flow_shift)
            self.can_train = True
            text_length = text_length or ARCHITECTURE_TEXT_LENGTH
        else:
            self.folder = ModelFolder.read(config.path)
        self.family = family_of(self.folder.denoiser_config, f"model.path={config.path}")
        scheduler = self.folder.scheduler_config or self.family.default_scheduler
        self.objective = make_objective(config.objective, scheduler, config.diffusion_steps)
        device = config.encoder_device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if config.space == "latent" and self.folder.vae is None:
            raise DataError(
                f"model.space=latent: {self.folder.root} has no vae/ (save the pipeline with its VAE, or use "
                "model.space=auto to attribute in pixel space)"
            )
        vae = None if config.space == "pixel" else self.folder.vae
        self.codec = None if vae is None else LatentCodec(vae, config.frames, config.vae_batch, device)
        # a causal video VAE does not commute with playing the clip backwards: contrasts encode the
        # reversed frames themselves (pixel space: flipping the clip is the same thing)
        self.time_reversal_commutes = self.codec is None
        geometry = None if self.codec is None else self.codec.geometry
        self.shared_inputs = SharedInputs(
            vae_temporal=1 if geometry is None else geometry.temporal,
            vae_spatial=1 if geometry is None else geometry.spatial,
            frame_rate=config.frame_rate,
            guidance=config.embedded_guidance,
        )
        self.text = TextConditioning(
            self.family,
            self.folder,
            config.captions,
            config.embeddings,
            config.prompt,
            text_length,
            device,
        )
        self._shared_condition: dict[str, torch.Tensor] | None = None

    # -- weights ------------------------------------------------------------------------------------

    def pretrained(self, clip_shape: tuple[int, int, int, int], num_classes: int) -> PretrainedWeights | None:
        """The folder's denoiser weights, or ``model.checkpoint``'s; the key hashes their content. None for
        an architecture without a checkpoint: the ``model`` stage trains it."""
        from mwga_core.storage.keys import digest
        from mwga_core.storage.weights_file import check_weights_path, content_hash, read_weights

        self.model_shape(clip_shape)  # a clip shape the model cannot take is named before any work
        if self.config.architecture and not self.config.checkpoint:
            return None
        if self.config.checkpoint:
            path = check_weights_path(self.config.checkpoint)
            files, weights = [path], read_weights(path)
            try:  # a checkpoint that does not fit the folder's architecture is named now
                self.load(_in_memory(weights), clip_shape, num_classes)
            except DataError as error:
                raise DataError(f"model.checkpoint={path}: {error}") from None
        else:
            files = weight_files(self.folder.denoiser)
            weights = files[0] if len(files) == 1 and files[0].suffix == ".safetensors" else _read_all(files)
        key = "diffusers-" + digest(
            {
                "denoiser": self.folder.denoiser_config,
                "objective": self.objective.kind,
                "timesteps": self.objective.model_timesteps.tolist()[:: max(1, self.objective.steps // 100)],
                "weights": [content_hash(path) for path in files],
            }
        )
        return PretrainedWeights(key=key, checkpoints={0: weights})

    def build_fresh(self, clip_shape: tuple[int, int, int, int], num_classes: int) -> torch.nn.Module:
        """A freshly initialised denoiser of ``model.architecture``, wrapped (see :func:`wrap`); the
        trainer seeds torch's random numbers."""
        if not self.config.architecture:
            return super().build_fresh(clip_shape, num_classes)  # raises ModelCannotTrainError
        self.model_shape(clip_shape)
        denoiser = build_fresh_denoiser(self.family.denoiser_class, self.folder.denoiser_config)
        return self._wrapped(denoiser)

    def load(
        self, weights: Mapping[str, torch.Tensor], clip_shape: tuple[int, int, int, int], num_classes: int
    ) -> torch.nn.Module:
        """The denoiser built from the folder's config holding ``weights``, wrapped (see :func:`wrap`).

        With ``model.architecture``, ``weights`` may be the trained wrapper's state dict (what the model
        store holds, names prefixed ``denoiser.``) or the diffusers denoiser's own."""
        if self.config.architecture:
            weights = unwrapped(weights)
        denoiser = build_denoiser(self.family.denoiser_class, self.folder.denoiser_config, weights)
        return self._wrapped(denoiser)

    def _wrapped(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        # torch.func runs attention without a batching rule one example at a time and says so at every
        # call: that is what vmap can do here, not something a user can act on
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        # bf16 autocast (training.bf16) feeds RMSNorm bf16 input with float32 gains: torch then takes its
        # unfused path, correct and said at every call
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        if self._shared_condition is None:
            self._shared_condition = self.text.shared()
        return wrap(denoiser, self)

    def temporal_parameter_names(self, module: torch.nn.Module) -> list[str]:
        """The family's across-frame parameters (e.g. AnimateDiff's motion modules, the transformers'
        self-attention), as named in the wrapper (``denoiser.`` + the diffusers name)."""
        names = [name for name, _ in module.denoiser.named_parameters()]
        return ["denoiser." + name for name in self.family.temporal_parameters(names)]

    # -- data ---------------------------------------------------------------------------------------

    def model_shape(self, clip_shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(C, T, H, W) in model space: the VAE's latent grid, or the frames; checked against the
        denoiser's channels and patch size."""
        where = self._where()
        if self.codec is not None:
            shape = self.codec.latent_shape(clip_shape)
        else:
            frames, height, width, colours = clip_shape
            shape = (self.family.in_channels if colours == 1 else colours, frames, height, width)
        if shape[0] != self.family.in_channels:
            source = "the VAE's latents have" if self.codec is not None else "the clips have"
            hint = (
                f" (set model.architecture_config.in_channels={shape[0]})" if self.config.architecture else ""
            )
            raise DataError(
                f"{where}: {source} {shape[0]} channels; the denoiser takes {self.family.in_channels}{hint}"
            )
        patch = self.family.patch()
        if any(size % p for size, p in zip(shape[1:], patch, strict=True)):
            raise DataError(
                f"{where}: the model-space grid (T, H, W) = {shape[1:]} is not a multiple of the denoiser's "
                f"patch {patch}: change dataset.num_frames / dataset.size"
            )
        return shape

    def _where(self) -> str:
        """The config field that names the model, for messages."""
        if self.config.architecture:
            return f"model.architecture={self.config.architecture}"
        return f"model.path={self.config.path}"

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.codec is not None:
            return self.codec.encode(frames)
        return pixels_to_model(frames, self.family.in_channels)

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return self.codec.decode(x) if self.codec is not None else super().decode(x)

    def encoder_key(self) -> str | None:
        """The VAE's config, weights' content and frame policy (None in pixel space: nothing to cache)."""
        if self.codec is None:
            return None
        from mwga_core.storage.keys import digest
        from mwga_core.storage.weights_file import content_hash

        files = weight_files(self.codec.folder)
        return "vae-" + digest(
            {
                "config": self.codec.config,
                "weights": [content_hash(p) for p in files],
                "frames": self.config.frames,
            }
        )

    def condition(self, clips: ClipSet) -> dict[str, torch.Tensor] | None:
        return self.text.per_clip(list(clips.ids))

    # -- diffusion ----------------------------------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.objective.add_noise(x0, t, noise)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.objective.target(x0, noise, t)

    def training_loss(self, prediction: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The family's own training loss: the MSE to its target (no eps/v reweighting)."""
        return self.per_example_loss(prediction, target)

    def sample(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise MwgaUserError(
            "model=diffusers does not sample clips: generate queries with your own pipeline and attribute "
            "them as files (mwga attribute <index> <videos>), or use query=heldout"
        )


def _in_memory(weights: Any) -> Mapping[str, torch.Tensor]:
    from mwga_core.api.models import weights_in_memory

    return weights_in_memory(weights)


def _read_all(files: list) -> dict[str, torch.Tensor]:
    """Every shard of a sharded (or .bin) weights folder, merged into one state dict."""
    from mwga_core.storage.weights_file import read_weights

    merged: dict[str, torch.Tensor] = {}
    for path in files:
        merged.update(_in_memory(read_weights(path)))
    return merged


def build_denoiser(
    class_name: str, config: dict[str, Any], weights: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """The diffusers denoiser ``class_name`` built from ``config`` with ``weights`` (float32, eval mode).

    The parameters are created empty (``accelerate``) and the weights assigned, so a large model is not
    initialised randomly first. Weights that do not fit raise a :class:`DataError` naming the first
    missing, unexpected and mis-shaped keys.
    """
    import diffusers

    denoiser_class = getattr(diffusers, class_name)
    try:
        from accelerate import init_empty_weights
    except ImportError:  # without accelerate: a plain (random) initialisation, then the weights
        init_empty_weights = None
    if init_empty_weights is None:
        module = denoiser_class.from_config(config)
    else:
        with init_empty_weights():
            module = denoiser_class.from_config(config)
    _check_fit(module, weights, class_name)
    module.load_state_dict({name: tensor.float() for name, tensor in weights.items()}, assign=True)
    return module.float().eval()


def _check_fit(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], class_name: str) -> None:
    problems = weights_mismatch(module, weights)
    if problems:
        raise DataError(f"the weights do not fit the folder's {class_name}: " + "; ".join(problems))


@functools.cache
def _wrapper_class() -> type:
    """The wrapper module class (defined on first use, so importing this module does not import torch)."""
    from torch import nn

    class DiffusersDenoiser(nn.Module):
        """``forward(x_t, t, labels=None, **condition)`` -> the family's prediction (see :func:`wrap`)."""

        def __init__(self, denoiser: nn.Module, adapter: DiffusersAdapter) -> None:
            super().__init__()
            self.denoiser = denoiser
            self.family, self.inputs = adapter.family, adapter.shared_inputs
            self.register_buffer(
                "model_timesteps", adapter.objective.model_timesteps.clone(), persistent=False
            )
            self.shared_names = sorted(adapter._shared_condition)
            for name in self.shared_names:
                self.register_buffer(
                    f"shared_{name}", adapter._shared_condition[name].clone(), persistent=False
                )

        def forward(self, x_t, t, labels=None, **condition):
            text = dict(condition)
            for name in self.shared_names:  # one prompt for every clip: an input shared by all examples
                if name not in text:
                    shared = getattr(self, f"shared_{name}")
                    text[name] = shared.expand(x_t.shape[0], *shared.shape[1:])
            timestep = self.model_timesteps[t]
            return self.family.predict(self.denoiser, x_t, timestep, text, self.inputs)

    return DiffusersDenoiser


def wrap(denoiser: torch.nn.Module, adapter: DiffusersAdapter) -> torch.nn.Module:
    """``denoiser`` as mwga calls a model: timestep index -> the family's timestep (buffer
    ``model_timesteps``), the shared text condition as buffers ``shared_*``, the family's packing.

    Shape: forward(x_t (B, C, T, H, W), t (B,) int64, labels ignored, **condition (B, ...) each)
    -> (B, C, T, H, W).
    """
    return _wrapper_class()(denoiser, adapter)
