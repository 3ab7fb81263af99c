"""A small video denoiser built for CPU speed: factorised space/time convolutions on a patchified grid.

A (C, T, H, W) clip is cut into ``patch`` x ``patch`` pixel patches per frame (32x32 with patch 4 gives
an 8x8 grid), each patch is linearly embedded to ``channels`` features, and ``blocks`` residual blocks
mix the grid. Every block adds the timestep (and class) embedding, then applies a per-frame 2-D
convolution (``spatial``) and a per-position 1-D convolution across frames (``temporal``). A linear
layer maps each token back to its patch of predicted noise. Only the ``temporal`` convolutions move
information between frames, so ``gradient.params=temporal`` selects exactly the motion-carrying weights.

A full-resolution 3-D UNet of similar size needs ~1.2 s per training step here (batch 32); this model
does one in a few tens of milliseconds under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mwga_core import hookimpl
from mwga_core.errors import ConfigValueError
from mwga_core.models import ModelAdapter, ModelConfig


@dataclass
class VideoDenoiserConfig(ModelConfig):
    """Architecture of the factorised denoiser (the schedule and training live in the base)."""

    #: patch side in pixels; H and W must be multiples of it
    patch: int = 4
    #: feature channels per grid token
    channels: int = 48
    #: residual space/time blocks
    blocks: int = 3
    #: kernel of the per-frame spatial convolution (odd)
    spatial_kernel: int = 3
    #: kernel of the across-frame temporal convolution (odd)
    temporal_kernel: int = 3


def build_denoiser(config: VideoDenoiserConfig, clip_shape: tuple[int, int, int, int], num_classes: int):
    """The torch module (see :class:`VideoDenoiser` for its forward contract)."""
    import torch
    from torch import nn

    frames, height, width, colours = clip_shape
    c, p = config.channels, config.patch
    if height % p or width % p:
        raise ConfigValueError("patch", p, f"a divisor of the frame size {height}x{width}")

    class FrameNorm(nn.GroupNorm):
        """GroupNorm with statistics per frame, so that only ``temporal`` layers mix frames."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, ch, t, h, w = x.shape
            per_frame = x.transpose(1, 2).reshape(b * t, ch, h, w)
            return super().forward(per_frame).reshape(b, t, ch, h, w).transpose(1, 2)

    class SpaceTimeBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = FrameNorm(min(8, c), c)
            self.emb_proj = nn.Linear(c, c)
            ks, kt = config.spatial_kernel, config.temporal_kernel
            self.spatial = nn.Conv3d(c, c, (1, ks, ks), padding=(0, ks // 2, ks // 2))
            self.temporal = nn.Conv3d(c, c, (kt, 1, 1), padding=(kt // 2, 0, 0))

        def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            h = self.norm(x) + self.emb_proj(emb)[:, :, None, None, None]
            h = self.spatial(nn.functional.silu(h))
            h = self.temporal(nn.functional.silu(h))
            return x + h

    class VideoDenoiser(nn.Module):
        """forward(x_t (B, C, T, H, W), t (B,) int64, labels (B,) int64 or None) -> eps (B, C, T, H, W)."""

        def __init__(self) -> None:
            super().__init__()
            self.patch_in = nn.Linear(colours * p * p, c)
            self.time_mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
            self.class_embedding = nn.Embedding(num_classes, c) if config.conditional else None
            self.blocks = nn.ModuleList(SpaceTimeBlock() for _ in range(config.blocks))
            self.norm_out = FrameNorm(min(8, c), c)
            self.patch_out = nn.Linear(c, colours * p * p)
            half = c // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            self.register_buffer("freqs", freqs, persistent=False)

        def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None):
            b = x.shape[0]
            gh, gw = height // p, width // p
            tokens = x.reshape(b, colours, frames, gh, p, gw, p).permute(0, 2, 3, 5, 1, 4, 6)
            h = self.patch_in(tokens.reshape(b, frames, gh, gw, colours * p * p))
            h = h.permute(0, 4, 1, 2, 3)  # (B, c, T, gh, gw)
            angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None]
            emb = torch.cat([angles.sin(), angles.cos()], dim=1)
            if emb.shape[1] < c:
                emb = nn.functional.pad(emb, (0, c - emb.shape[1]))
            emb = self.time_mlp(emb)
            if self.class_embedding is not None:
                if labels is None:
                    raise ValueError("this denoiser is class-conditional: pass labels")
                emb = emb + self.class_embedding(labels)
            emb = nn.functional.silu(emb)
            for block in self.blocks:
                h = block(h, emb)
            h = nn.functional.silu(self.norm_out(h)).permute(0, 2, 3, 4, 1)
            out = self.patch_out(h).reshape(b, frames, gh, gw, colours, p, p)
            return out.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, colours, frames, height, width)

    return VideoDenoiser()


class VideoDenoiserAdapter(ModelAdapter):
    """The built-in CPU-first video denoiser (eps prediction, DDPM/DDIM)."""

    def __init__(self, config: VideoDenoiserConfig) -> None:
        super().__init__(config)
        c = config
        if c.patch < 1:
            raise ConfigValueError("patch", c.patch, "an integer >= 1")
        if c.channels < 2 or c.channels % 2:
            raise ConfigValueError("channels", c.channels, "an even integer >= 2")
        if c.blocks < 1:
            raise ConfigValueError("blocks", c.blocks, "an integer >= 1")
        for name in ("spatial_kernel", "temporal_kernel"):
            value = getattr(c, name)
            if value < 1 or value % 2 == 0:
                raise ConfigValueError(name, value, "an odd integer >= 1")

    def build(self, clip_shape: tuple[int, int, int, int], num_classes: int):
        return build_denoiser(self.config, clip_shape, num_classes)


@hookimpl
def mwga_register_models(register):
    register(
        "video_denoiser",
        VideoDenoiserAdapter,
        VideoDenoiserConfig,
        description="small factorised space/time denoiser on a patchified grid (CPU-first)",
    )
