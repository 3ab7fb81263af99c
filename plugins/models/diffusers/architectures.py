"""Diffusers denoisers mwga trains itself: ``model=diffusers model.architecture=<name>``, no folder.

So that attribution quality with a real video-diffusion architecture can be measured on the synthetic
benchmark exactly as for ``model=video_denoiser``, the adapter can build a small diffusers denoiser from a
config (``from_config`` of the family's class, seeded by the trainer) and train it on the corpus. The
model works in pixel space (no VAE) and is trained with its family's objective; everything else is the
folder adapter's: the family wrapper, the timestep table, the per-example gradients.

Implementations (``ARCHITECTURES``):
    wan: ``WanTransformer3DModel``. Tiny defaults for the benchmark's 16-frame 32 x 32 grey clips:
        patch (2, 4, 4), so a clip is 8 x 8 x 8 = 512 tokens of 2 frames each (as Wan's own tokens span
        4 frames through its VAE); 2 blocks of width 32 (2 heads of 16); ffn 64; 38,272 parameters.
        Flow matching (target eps - x0, denoiser timestep 1000 sigma). With one frame per token
        (patch (1, 4, 4)) the model trained for 600 steps did not use the order of the frames at all
        (docs/own-model.md), so its gradients carried next to no motion.

Decisions, stated once here and in docs/own-model.md:

* **Timesteps.** The trainer draws the index t uniformly from [0, N) and the objective's table maps it to
  sigma_t = shift u / (1 + (shift - 1) u), u = (t + 1) / N: the flow scheduler's training sigmas. The
  scheduler is ``FlowMatchEulerDiscreteScheduler`` with ``shift = model.flow_shift`` (default 1: sigma
  uniform on (0, 1], rectified flow). Wan's pipelines shift by 3 (480p) or 5 (720p) because large frames
  are redundant at a given noise level; 32 x 32 pixels are not, so the default is unshifted.
  ``gradient.timesteps`` are indices into the same table.
* **Conditioning.** There is no text encoder: every clip gets the all-zero text embedding
  (:meth:`~mwga_plugins.models.diffusers.conditioning.TextConditioning.zeros`) of one token. Wan's text
  projection (Linear - GELU - Linear, with biases) turns it into a *learned* constant token, so the model
  learns its own "empty prompt" exactly as a learned null embedding would (its value is the projection's
  bias path), without a parameter that exists only for mwga. One token is enough: identical text tokens
  get uniform cross-attention, whose output is the same for any number of them.
* **Weights.** The trainer stores the wrapper's state dict (names prefixed ``denoiser.``); :func:`unwrapped`
  also takes a plain diffusers state dict, so ``model.checkpoint`` may name either.

``diffusers`` is imported when an architecture is resolved, never when this module is imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mwga_plugins.models.diffusers.folder import ModelFolder

from mwga_core.api.errors import ConfigValueError

if TYPE_CHECKING:
    import torch

#: ``model.architecture`` -> (the diffusers denoiser class, its tiny ``from_config`` defaults)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "wan": (
        "WanTransformer3DModel",
        {
            "patch_size": [2, 4, 4],
            "num_attention_heads": 2,
            "attention_head_dim": 16,
            "in_channels": 1,
            "out_channels": 1,
            "text_dim": 16,
            "freq_dim": 32,
            "ffn_dim": 64,
            "num_layers": 2,
            "rope_max_seq_len": 32,
        },
    ),
}
#: ``model.architecture`` values; "" = load ``model.path``
ARCHITECTURE_NAMES = ("", *ARCHITECTURES)
#: the prefix of the denoiser's parameter names in the module mwga trains (the family wrapper's)
WRAPPED = "denoiser."
#: text tokens of the empty-prompt stand-in of a trained architecture (see the module docstring)
ARCHITECTURE_TEXT_LENGTH = 1


def resolve_architecture(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The full ``from_config`` kwargs of architecture ``name``: its tiny defaults updated by ``overrides``
    (``model.architecture_config``), checked against the class's constructor.

    ``out_channels`` follows ``in_channels`` unless given (the prediction has the input's channels).

    Raises:
        ConfigValueError: a key the class does not take, naming the ones it does.
    """
    import diffusers

    class_name, defaults = ARCHITECTURES[name]
    accepted = [
        p for p in inspect.signature(getattr(diffusers, class_name).__init__).parameters if p != "self"
    ]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ConfigValueError(
            f"architecture_config.{unknown[0]}",
            overrides[unknown[0]],
            f"a {class_name} argument: {accepted}",
        )
    config = {**defaults, **{key: _plain(value) for key, value in overrides.items()}}
    if "in_channels" in overrides and "out_channels" not in overrides:
        config["out_channels"] = config["in_channels"]
    return config


def check_architecture_fields(config: Any) -> None:
    """Refuse, in the ``model=diffusers`` config ``config``, the fields that do not go together with
    ``model.architecture`` (a trained architecture has no folder, VAE or text encoder) or without it."""
    if not config.architecture:
        if config.architecture_config:
            raise ConfigValueError(
                "architecture_config", dict(config.architecture_config), "{} without model.architecture"
            )
        if config.flow_shift != 1.0:
            raise ConfigValueError(
                "flow_shift",
                config.flow_shift,
                "1.0 without model.architecture (the scheduler decides)",
            )
        return
    where = f"model.architecture={config.architecture}"
    refused = (
        ("path", config.path != "", f'"" with {where} (it is trained, not loaded)'),
        ("space", config.space == "latent", f"auto or pixel: {where} has no VAE"),
        ("captions", config.captions != "", f'"": {where} has no text encoder'),
        (
            "objective",
            config.objective not in ("auto", "flow"),
            f"auto or flow: {where} trains flow matching",
        ),
    )
    for name, wrong, allowed in refused:
        if wrong:
            raise ConfigValueError(name, getattr(config, name), allowed)


def architecture_folder(name: str, config: Mapping[str, Any], flow_shift: float) -> ModelFolder:
    """A :class:`ModelFolder` with no files: architecture ``name`` built from ``config``, its flow
    scheduler shifted by ``flow_shift``, no VAE (pixel space), no text encoder."""
    class_name, _ = ARCHITECTURES[name]
    root = Path(f"<model.architecture={name}>")
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": float(flow_shift)}
    denoiser_config = {"_class_name": class_name, **config}
    return ModelFolder(root, root, denoiser_config, None, scheduler, None, False)


def build_fresh_denoiser(class_name: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """A freshly initialised ``class_name`` from ``config`` (float32, train mode), drawn from torch's
    global random numbers (the trainer seeds them)."""
    import diffusers

    config = {key: value for key, value in config.items() if key != "_class_name"}
    return getattr(diffusers, class_name).from_config(config).float().train()


def unwrapped(weights: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A diffusers state dict: ``weights`` without the wrapper's ``denoiser.`` prefix when every name has it
    (what the trainer stores), else ``weights`` itself."""
    if weights and all(name.startswith(WRAPPED) for name in weights):
        return {name[len(WRAPPED) :]: tensor for name, tensor in weights.items()}
    return weights


def _plain(value: Any) -> Any:
    """An OmegaConf list / dict as plain Python (diffusers stores its config as JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
