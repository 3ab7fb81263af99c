"""Clips to a pipeline's latent space and back, with its VAE: frame-count rules and latent normalisation.

Supported VAEs (``vae/config.json``'s ``_class_name``), with the frame counts they encode and how the
pipeline normalises their latents z (the posterior mean, so encoding is deterministic):

=============================  ==========================  ==================================================
VAE                            frames T                    model-space latent
=============================  ==========================  ==================================================
AutoencoderKLWan               1 + 4k                      (z - latents_mean) / latents_std (config)
AutoencoderKLCogVideoX         1 + t k (t: its temporal    z * scaling_factor
                               compression)
AutoencoderKLLTXVideo          1 + t k                     (z - latents_mean) * scaling_factor / latents_std
                                                           (the VAE's buffers)
AutoencoderKLHunyuanVideo      1 + t k                     z * scaling_factor
AutoencoderKLMochi             1 + 6k                      (z - latents_mean) * scaling_factor / latents_std
                                                           (config)
AutoencoderKL (image, per      any                         (z - shift_factor) * scaling_factor
frame: ModelScope, AnimateDiff)
=============================  ==========================  ==================================================

A causal video VAE encodes the first frame alone and then t frames per latent frame, so T' = 1 + (T-1)/t;
other frame counts are refused with the counts that work (``model.frames=exact``) or trimmed to the
largest that works (``model.frames=trim``: the last frames are dropped). Grey clips are repeated to RGB.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mwga_plugins.models.diffusers.folder import read_json

from mwga_core.api.errors import DataError

if TYPE_CHECKING:
    import torch

#: ``model.frames``: refuse a frame count the VAE cannot encode, or drop the last frames
FRAME_POLICIES = ("exact", "trim")


@dataclass(frozen=True)
class VaeGeometry:
    """How a VAE shrinks a clip.

    Attributes:
        channels: latent channels C'.
        temporal: frames per latent frame after the first (1 for a per-frame image VAE).
        chunk: T - 1 must be a multiple of it (Wan encodes 4 frames at a time, whatever ``temporal``).
        spatial: pixels per latent pixel along each side.
        causal: the first frame is encoded alone (T' = 1 + (T - 1) / temporal); False: T' = T.
        in_channels: colour channels it reads.
    """

    channels: int
    temporal: int
    chunk: int
    spatial: int
    causal: bool
    in_channels: int = 3

    def frames_used(self, frames: int, policy: str, where: str) -> int:
        """The frames of a T-frame clip that are encoded: T, or fewer with ``policy`` trim."""
        if not self.causal or (frames - 1) % self.chunk == 0 and frames > 1:
            return frames
        trimmed = 1 + (frames - 1) // self.chunk * self.chunk
        if policy == "trim" and trimmed > 1:
            return trimmed
        lower, upper = trimmed, trimmed + self.chunk
        raise DataError(
            f"{where}: this VAE encodes 1 + {self.chunk}k frames and the clips have {frames}: set "
            f"dataset.num_frames={upper}"
            + (f" (or {lower})" if lower > 1 else "")
            + (f", or model.frames=trim to drop the last {frames - lower}" if lower > 1 else "")
        )

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal if self.causal else frames


def vae_geometry(config: dict[str, Any], where: str) -> VaeGeometry:
    """The geometry of a VAE from its config (no weights needed), or a :class:`DataError`."""
    name = config.get("_class_name")
    if name == "AutoencoderKLWan":
        levels = config.get("temperal_downsample", [False, True, True])
        spatial = 2 ** len(levels) * int(config.get("patch_size") or 1)
        return VaeGeometry(int(config.get("z_dim", 16)), 2 ** sum(map(bool, levels)), 4, spatial, True)
    if name == "AutoencoderKLCogVideoX":
        levels = len(config.get("down_block_types", [None] * 4)) - 1
        temporal = 2 ** min(int(math.log2(config.get("temporal_compression_ratio", 4))), levels)
        return VaeGeometry(int(config.get("latent_channels", 16)), temporal, temporal, 2**levels, True)
    if name == "AutoencoderKLLTXVideo":
        scalings = sum(map(bool, config.get("spatio_temporal_scaling", (True, True, True, False))))
        spatial = config.get("spatial_compression_ratio") or int(config.get("patch_size", 4)) * 2**scalings
        temporal = (
            config.get("temporal_compression_ratio") or int(config.get("patch_size_t", 1)) * 2**scalings
        )
        return VaeGeometry(
            int(config.get("latent_channels", 128)), int(temporal), int(temporal), int(spatial), True
        )
    if name == "AutoencoderKLHunyuanVideo":
        temporal = int(config.get("temporal_compression_ratio", 4))
        spatial = int(config.get("spatial_compression_ratio", 8))
        return VaeGeometry(int(config.get("latent_channels", 16)), temporal, temporal, spatial, True)
    if name == "AutoencoderKLMochi":
        temporal = math.prod(config.get("temporal_expansions", (1, 2, 3)))
        spatial = math.prod(config.get("spatial_expansions", (2, 2, 2)))
        return VaeGeometry(int(config.get("latent_channels", 12)), temporal, temporal, spatial, True)
    if name == "AutoencoderKL":
        spatial = 2 ** (len(config.get("block_out_channels", [0] * 4)) - 1)
        return VaeGeometry(int(config.get("latent_channels", 4)), 1, 1, spatial, False)
    raise DataError(
        f"{where}: VAE class {name!r} is not supported; supported: AutoencoderKLWan, AutoencoderKLCogVideoX, "
        "AutoencoderKLLTXVideo, AutoencoderKLHunyuanVideo, AutoencoderKLMochi, AutoencoderKL (per frame)"
    )


def pixels_to_model(frames: np.ndarray | torch.Tensor, channels: int) -> torch.Tensor:
    """Frames to the [-1, 1] channels-first layout VAEs and pixel-space models read; grey -> ``channels``.

    Shape: frames (N, T, H, W, C) in [0, 1] -> (N, channels, T, H, W) float32.
    """
    import torch

    x = torch.as_tensor(np.asarray(frames, dtype=np.float32)).permute(0, 4, 1, 2, 3) * 2 - 1
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(-1, channels, -1, -1, -1)
    return x.contiguous()


def _has_buffers(vae: torch.nn.Module) -> bool:
    """Whether the VAE keeps its latent statistics as buffers (LTX-Video) rather than in its config."""
    buffers = dict(vae.named_buffers(recurse=False))
    return "latents_mean" in buffers and "latents_std" in buffers


class LatentCodec:
    """A pipeline's VAE, loaded when first used (see the module docstring).

    Args:
        folder: the VAE's folder (``vae/``).
        policy: ``model.frames`` (exact or trim).
        batch: clips encoded at a time.
        device: where the VAE runs.
    """

    def __init__(self, folder: Path, policy: str, batch: int, device: str) -> None:
        self.folder, self.policy, self.batch, self.device = folder, policy, batch, device
        self.config = read_json(folder / "config.json")
        self.geometry = vae_geometry(self.config, str(folder))
        self._vae = None
        self._warned_grey = False

    def latent_shape(self, clip_shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(C', T', H', W') of a clip of ``clip_shape`` = (T, H, W, C); a frame count it cannot encode
        or sides it cannot divide raise a :class:`DataError`."""
        g = self.geometry
        frames, height, width, _ = clip_shape
        used = g.frames_used(frames, self.policy, f"model.path VAE {self.folder}")
        if height % g.spatial or width % g.spatial:
            raise DataError(
                f"{self.folder}: this VAE shrinks frames {g.spatial}x; the clips are {height}x{width}: set "
                f"dataset.size to sides divisible by {g.spatial}"
            )
        return g.channels, g.latent_frames(used), height // g.spatial, width // g.spatial

    def vae(self) -> torch.nn.Module:
        """The VAE module, loaded once, in eval mode on ``device``."""
        if self._vae is None:
            import diffusers

            vae_class = getattr(diffusers, self.config["_class_name"])
            self._vae = vae_class.from_pretrained(str(self.folder)).to(self.device).float().eval()
        return self._vae

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames to normalised latents (see the module docstring).

        Shape: frames (N, T, H, W, C) in [0, 1] -> (N, C', T', H', W') float32 on the CPU.
        """
        import torch

        frames = np.asarray(frames, dtype=np.float32)
        used = self.geometry.frames_used(frames.shape[1], self.policy, f"model.path VAE {self.folder}")
        if frames.shape[-1] == 1 and self.geometry.in_channels == 3 and not self._warned_grey:
            self._warned_grey = True
            warnings.warn(
                "the clips are grey and the VAE reads RGB: the grey channel is repeated "
                "(set dataset.grayscale=false to attribute colour clips)",
                stacklevel=2,
            )
        parts = []
        with torch.no_grad():
            for start in range(0, len(frames), self.batch):
                x = pixels_to_model(frames[start : start + self.batch, :used], self.geometry.in_channels)
                parts.append(self._encode(x.to(self.device)).float().cpu())
        return torch.cat(parts)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: x (n, 3, T, H, W) in [-1, 1] -> (n, C', T', H', W') normalised."""
        vae, config = self.vae(), self.config
        if not self.geometry.causal:  # an image VAE: every frame on its own
            n, c, t, h, w = x.shape
            z = vae.encode(x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)).latent_dist.mode()
            z = z.reshape(n, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        else:
            z = vae.encode(x).latent_dist.mode()
        return self._normalise(z, vae, config)

    @staticmethod
    def _normalise(z: torch.Tensor, vae: torch.nn.Module, config: dict[str, Any]) -> torch.Tensor:
        import torch

        def channel(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=z.dtype, device=z.device).reshape(1, -1, 1, 1, 1)

        scale = float(config.get("scaling_factor") or 1.0)
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:  # Wan, Mochi
            return (z - channel(config["latents_mean"])) * scale / channel(config["latents_std"])
        if _has_buffers(vae):  # LTX: buffers in the weights
            return (z - channel(vae.latents_mean)) * scale / channel(vae.latents_std)
        return (z - float(config.get("shift_factor") or 0.0)) * scale

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents back to frames (N, T, H, W, 3) float32 in [0, 1]."""
        import torch

        vae, config = self.vae(), self.config
        z = latents.float().to(self.device)
        scale = float(config.get("scaling_factor") or 1.0)
        shape = (1, -1, 1, 1, 1)
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:
            mean = torch.as_tensor(config["latents_mean"], device=z.device).reshape(shape)
            z = z * torch.as_tensor(config["latents_std"], device=z.device).reshape(shape) / scale + mean
        elif _has_buffers(vae):
            z = z * vae.latents_std.reshape(shape) / scale + vae.latents_mean.reshape(shape)
        else:
            z = z / scale + float(config.get("shift_factor") or 0.0)
        with torch.no_grad():
            if self.geometry.causal:
                video = vae.decode(z).sample
            else:
                n, c, t, h, w = z.shape
                video = vae.decode(z.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)).sample
                video = video.reshape(n, t, *video.shape[1:]).permute(0, 2, 1, 3, 4)
        frames = ((video.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)
        return frames.contiguous().numpy()
