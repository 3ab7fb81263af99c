"""Loading RAFT weights: official princeton-vl checkpoints and torchvision ``raft_large``/``raft_small``
(and mwga's own RAFT-tiny, written by ``mwga train-raft --variant tiny`` in the official layout).

Both layouts hold the same tensors under different names. This module's model uses the official names;
a torchvision state dict is renamed by :data:`TORCHVISION_TO_OFFICIAL`, an ordered list of regular
expressions read top to bottom, and :func:`to_torchvision` does the reverse (for tests and export).

Layouts accepted by :func:`load_raft`:
    official: ``fnet.conv1.weight``, ``update_block.gru.convz1.weight``..., optionally prefixed
        ``module.`` (checkpoints saved from ``DataParallel``, as ``raft-things.pth`` and ``raft-small.pth``).
    torchvision: ``feature_encoder.convnormrelu.0.weight``, ``update_block.recurrent_block.convgru1.convz
        .weight``, ``mask_predictor.conv.weight``...
    A dict wrapping either under ``state_dict`` or ``model`` is unwrapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from mwga_plugins.motion.raft_net.raft import RAFT, SPECS, VARIANTS

from mwga_core.api.errors import DataError

_ENCODER = r"(fnet|cnet)"

#: torchvision name -> official name, applied in order (first match wins) after the encoder prefixes
#: ``feature_encoder``/``context_encoder`` became ``fnet``/``cnet``. ``{gru}`` is filled per variant.
TORCHVISION_TO_OFFICIAL: list[tuple[str, str]] = [
    # encoder stem: Conv2dNormActivation(conv, norm, relu) -> conv1, norm1
    (rf"^{_ENCODER}\.convnormrelu\.0\.", r"\1.conv1."),
    (rf"^{_ENCODER}\.convnormrelu\.1\.", r"\1.norm1."),
    # residual/bottleneck blocks: convnormreluK.0 -> convK, convnormreluK.1 -> normK
    (rf"^{_ENCODER}\.(layer\d\.\d)\.convnormrelu(\d)\.0\.", r"\1.\2.conv\3."),
    (rf"^{_ENCODER}\.(layer\d\.\d)\.convnormrelu(\d)\.1\.", r"\1.\2.norm\3."),
    # shortcut projection keeps its name (downsample.0 conv, downsample.1 norm)
    (rf"^{_ENCODER}\.(layer\d\.\d)\.downsample\.", r"\1.\2.downsample."),
    # encoder output 1x1 convolution
    (rf"^{_ENCODER}\.conv\.", r"\1.conv2."),
    # motion encoder: Conv2dNormActivation(conv, relu) wrappers
    (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", r"update_block.encoder.convc\1."),
    (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", r"update_block.encoder.convf\1."),
    (r"^update_block\.motion_encoder\.conv\.0\.", r"update_block.encoder.conv."),
    # recurrent block: large has two GRUs (1x5 then 5x1) -> convz1.., convz2..; small one 3x3 GRU -> convz
    (r"^update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.", "{gru}"),
    (r"^update_block\.flow_head\.", r"update_block.flow_head."),
    # mask head (large only): convrelu = Conv2dNormActivation(conv, relu); conv = the 1x1 output
    (r"^mask_predictor\.convrelu\.0\.", r"update_block.mask.0."),
    (r"^mask_predictor\.conv\.", r"update_block.mask.2."),
]

_GRU_OFFICIAL = {"large": r"update_block.gru.conv\2\1.", "small": r"update_block.gru.conv\2."}


class CheckpointError(DataError):
    """A file that is not a RAFT checkpoint of the expected kind or shape."""


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix ``DataParallel`` puts on every key."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``official``, ``torchvision`` or ``unknown`` (keys already stripped of ``module.``)."""
    if any(key.startswith(("fnet.", "cnet.")) for key in state):
        return "official"
    if any(key.startswith(("feature_encoder.", "context_encoder.")) for key in state):
        return "torchvision"
    return "unknown"


def detect_variant(state: dict[str, torch.Tensor]) -> str | None:
    """``large``, ``small`` or ``tiny`` from the weights' shapes (official layout), None if none fits.

    Large and small differ in the feature encoder's stem width (64 vs 32). Tiny has small's stem width
    but a convex-upsampling mask head (which small lacks) with 9 * 2 * 2 = 36 outputs (large's has
    9 * 8 * 8 = 576), so the mask head's output tells it apart.
    """
    stem = state.get("fnet.conv1.weight")
    if stem is None or stem.ndim != 4:
        return None
    mask = state.get("update_block.mask.2.weight")
    if mask is not None and mask.ndim == 4 and int(mask.shape[0]) == 9 * SPECS["tiny"].stride ** 2:
        return "tiny"
    return {64: "large", 32: "small"}.get(int(stem.shape[0]))


def from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ``raft_large``/``raft_small`` state dict to the official layout.

    The official layout also lists each strided block's shortcut norm as ``norm3`` (residual) or
    ``norm4`` (bottleneck); those aliases are added.
    """
    # Large has two GRUs (convgru1/2); small and tiny one 3x3 GRU, whose keys lose the GRU index.
    two_grus = any(".recurrent_block.convgru2." in key for key in state)
    gru = _GRU_OFFICIAL["large" if two_grus else "small"]
    rules = [(pattern, gru if target == "{gru}" else target) for pattern, target in TORCHVISION_TO_OFFICIAL]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = re.sub(r"^feature_encoder\.", "fnet.", key)
        key = re.sub(r"^context_encoder\.", "cnet.", key)
        for pattern, target in rules:
            new_key, count = re.subn(pattern, target, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    for key, value in list(renamed.items()):
        match = re.match(rf"^({_ENCODER}\.layer\d\.\d)\.downsample\.1\.(.+)$", key)
        if match:
            block, suffix = match.group(1), match.group(3)
            alias = "norm4" if f"{block}.conv3.weight" in renamed else "norm3"
            renamed[f"{block}.{alias}.{suffix}"] = value
    return renamed


def to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse of :func:`from_torchvision`: an official-layout state dict in torchvision's names."""
    state = strip_prefix(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.match(rf"^({_ENCODER}\.layer\d\.\d)\.norm(\d)\.", key)
        if block and (
            (block.group(3) == "3" and f"{block.group(1)}.conv3.weight" not in state) or block.group(3) == "4"
        ):
            continue  # the shortcut norm's alias; torchvision keeps only downsample.1
        rules = [
            (rf"^{_ENCODER}\.conv1\.", r"\1.convnormrelu.0."),
            (rf"^{_ENCODER}\.norm1\.", r"\1.convnormrelu.1."),
            (rf"^{_ENCODER}\.(layer\d\.\d)\.conv(\d)\.", r"\1.\2.convnormrelu\3.0."),
            (rf"^{_ENCODER}\.(layer\d\.\d)\.norm(\d)\.", r"\1.\2.convnormrelu\3.1."),
            (rf"^{_ENCODER}\.conv2\.", r"\1.conv."),
            (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
            (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
            (r"^update_block\.encoder\.conv\.", r"update_block.motion_encoder.conv.0."),
            (r"^update_block\.gru\.conv([zrq])(\d)\.", r"update_block.recurrent_block.convgru\2.conv\1."),
            (r"^update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),
            (r"^update_block\.mask\.0\.", r"mask_predictor.convrelu.0."),
            (r"^update_block\.mask\.2\.", r"mask_predictor.conv."),
        ]
        for pattern, target in rules:
            new_key, count = re.subn(pattern, target, key)
            if count:
                key = new_key
                break
        key = re.sub(r"^fnet\.", "feature_encoder.", key)
        key = re.sub(r"^cnet\.", "context_encoder.", key)
        out[key] = value
    return out


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict) and len(obj) <= 4:
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_state_dict(model: RAFT, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``state`` fits ``model`` key for key and
    shape for shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes: {_describe(mismatched)}")
    if problems:
        raise CheckpointError(f"{path} is not a RAFT-{model.variant} checkpoint: " + "; ".join(problems))


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The official-layout state dict stored in ``path`` (any accepted layout), without loading a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): a truncated download or copy? Download or train it again."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        # Some failures carry no message (an EOFError): name the exception so the reason is never "()".
        reason = str(error).strip() or type(error).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint; the file may be truncated or not a .pth "
            f"file ({reason})"
        ) from None
    state = strip_prefix(_unwrap(obj, path))
    layout = detect_layout(state)
    if layout == "torchvision":
        state = from_torchvision(state)
    elif layout == "unknown":
        raise CheckpointError(
            f"{path} is not a RAFT checkpoint: no official (fnet./cnet.) or torchvision "
            f"(feature_encoder./context_encoder.) keys; first keys: {_describe(sorted(state))}"
        )
    return state


def load_raft(path: Path | str, variant: str = "auto") -> RAFT:
    """A RAFT model with the weights of ``path``, in eval mode on the CPU.

    Args:
        path: a ``.pth`` file in the official or torchvision layout.
        variant: ``auto`` (from the weights), ``large``, ``small`` or ``tiny`` (checked against the
            weights).
    """
    if variant not in ("auto", *VARIANTS):
        raise ValueError(f"variant {variant!r} is not one of auto, {', '.join(VARIANTS)}")
    state = read_state_dict(path)
    found = detect_variant(state)
    if variant == "auto":
        if found is None:
            stem = state.get("fnet.conv1.weight")
            shape = None if stem is None else tuple(stem.shape)
            raise CheckpointError(
                f"{path}: cannot tell RAFT-large, -small or -tiny apart: fnet.conv1.weight has shape "
                f"{shape} (expected 64 or 32 output channels)"
            )
        variant = found
    elif found is not None and found != variant:
        raise CheckpointError(f"{path} holds RAFT-{found} weights, but variant={variant} was asked for")
    model = RAFT(variant=variant)
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    return model.eval()
