"""A small video denoiser built for CPU speed: factorised space/time convolutions on a patchified grid.

A (C, T, H, W) clip is cut into ``patch`` x ``patch`` pixel patches per frame (32x32 with patch 4 gives
an 8x8 grid), each patch is linearly embedded to ``channels`` features, and ``blocks`` residual blocks
mix the grid. Every block adds the timestep (and class) embedding, then applies a per-frame 2-D
convolution (``spatial``) and a per-position 1-D convolution across frames (``temporal``). A linear
layer maps each token back to its patch of predicted noise. Only the ``temporal`` convolutions move
information between frames, so ``gradient.params=temporal`` selects exactly the motion-carrying weights.

Options (all measured in ``docs/results-real-gradients.md``): ``temporal_spatial_kernel`` gives the
temporal convolution a spatial extent, ``temporal_attention_heads`` adds attention across all frames per
token, and ``parametrization=v`` (the default) lets the body predict v and converts it to eps inside
``forward``; with ``eps`` the DDIM x0 estimate divides the body's error by sqrt(alpha_bar) ~ 0 at high
noise, and the samples come out as flickering noise. With ``context_frames`` = k > 0 (image-to-video)
every frame's patch embedding also sees the k-th clean frame's patch at the same place, as SVD
concatenates its conditioning frame to every frame.

A full-resolution 3-D UNet of similar size needs ~1.2 s per training step here (batch 32); this model
does one in a few tens of milliseconds under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mwga_core import hookimpl
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter, ModelConfig
from mwga_core.config.checks import at_least, one_of, satisfies
from mwga_core.diffusion.schedules import make_schedule

PARAMETRIZATIONS = ("eps", "v")
_ODD = satisfies(lambda k: k >= 1 and k % 2 == 1, "an odd integer >= 1")


@dataclass
class VideoDenoiserConfig(ModelConfig):
    """Architecture of the factorised denoiser (the schedule and training live in the base)."""

    #: patch side in pixels; H and W must be multiples of it
    patch: int = field(default=4, metadata=at_least(1))
    #: feature channels per grid token
    channels: int = field(
        default=48, metadata=satisfies(lambda c: c >= 2 and c % 2 == 0, "an even integer >= 2")
    )
    #: residual space/time blocks
    blocks: int = field(default=3, metadata=at_least(1))
    #: kernel of the per-frame spatial convolution (odd)
    spatial_kernel: int = field(default=3, metadata=_ODD)
    #: kernel of the across-frame temporal convolution (odd)
    temporal_kernel: int = field(default=3, metadata=_ODD)
    #: spatial extent of the temporal convolution (odd; 1 = co-located tokens only)
    temporal_spatial_kernel: int = field(default=1, metadata=_ODD)
    #: add self-attention across all frames per grid token after each temporal convolution (0 = off;
    #: otherwise the number of heads, a divisor of channels)
    temporal_attention_heads: int = 0
    #: what the network body predicts: eps (the noise) or v (sqrt(ab) eps - sqrt(1-ab) x0, turned into
    #: eps inside forward as eps = sqrt(ab) v + sqrt(1-ab) x_t, so the x0 estimate stays bounded at high t)
    parametrization: str = field(default="v", metadata=one_of(*PARAMETRIZATIONS))


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
            kts = config.temporal_spatial_kernel
            self.temporal = nn.Conv3d(c, c, (kt, kts, kts), padding=(kt // 2, kts // 2, kts // 2))

            heads = config.temporal_attention_heads
            self.temporal_attention = TemporalAttention(heads) if heads else None

        def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            h = self.norm(x) + self.emb_proj(emb)[:, :, None, None, None]
            h = self.spatial(nn.functional.silu(h))
            h = self.temporal(nn.functional.silu(h))
            if self.temporal_attention is not None:
                h = h + self.temporal_attention(h)
            return x + h

    class TemporalAttention(nn.Module):
        """Multi-head self-attention over the T frames of each grid token (full temporal receptive field)."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm = FrameNorm(min(8, c), c)
            self.qkv = nn.Linear(c, 3 * c)
            self.out = nn.Linear(c, c)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, ch, t, gh, gw = h.shape
            seq = self.norm(h).permute(0, 3, 4, 2, 1).reshape(b * gh * gw, t, ch)
            q, k, v = self.qkv(seq).reshape(-1, t, 3, self.heads, ch // self.heads).permute(2, 0, 3, 1, 4)
            mixed = nn.functional.scaled_dot_product_attention(q, k, v)
            mixed = self.out(mixed.transpose(1, 2).reshape(-1, t, ch))
            return mixed.reshape(b, gh, gw, t, ch).permute(0, 4, 3, 1, 2)

    class VideoDenoiser(nn.Module):
        """forward(x_t (B, C, T, H, W), t (B,) int64, labels (B,) int64 or None) -> eps (B, C, T, H, W)."""

        def __init__(self) -> None:
            super().__init__()
            # Image-to-video (context_frames k > 0): every frame's tokens also see the last clean context
            # frame's patch at the same place, as SVD concatenates its conditioning frame to each frame.
            self.context = config.context_frames
            self.patch_in = nn.Linear(colours * p * p * (2 if self.context else 1), c)
            self.time_mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
            self.class_embedding = nn.Embedding(num_classes, c) if config.conditional else None
            self.blocks = nn.ModuleList(SpaceTimeBlock() for _ in range(config.blocks))
            self.norm_out = FrameNorm(min(8, c), c)
            self.patch_out = nn.Linear(c, colours * p * p)
            half = c // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            self.register_buffer("freqs", freqs, persistent=False)
            alpha_bars = make_schedule(config.schedule, config.diffusion_steps).alpha_bars.float()
            self.register_buffer("alpha_bars", alpha_bars, persistent=False)

        def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None):
            b = x.shape[0]
            gh, gw = height // p, width // p
            inputs = x
            if self.context:
                inputs = torch.cat([x, x[:, :, self.context - 1 : self.context].expand_as(x)], dim=1)
            channels = inputs.shape[1]
            tokens = inputs.reshape(b, channels, frames, gh, p, gw, p).permute(0, 2, 3, 5, 1, 4, 6)
            h = self.patch_in(tokens.reshape(b, frames, gh, gw, channels * p * p))
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
            out = out.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, colours, frames, height, width)
            if config.parametrization == "v":
                ab = self.alpha_bars[t].reshape(-1, 1, 1, 1, 1)
                out = ab.sqrt() * out + (1 - ab).sqrt() * x
            return out

    return VideoDenoiser()


class VideoDenoiserAdapter(ModelAdapter):
    """The built-in CPU-first video denoiser (eps prediction, DDPM/DDIM)."""

    def __init__(self, config: VideoDenoiserConfig) -> None:
        super().__init__(config)
        heads = config.temporal_attention_heads
        if heads < 0 or (heads and config.channels % heads):
            raise ConfigValueError(
                "temporal_attention_heads", heads, f"0 or a divisor of channels={config.channels}"
            )

    def build_fresh(self, clip_shape: tuple[int, int, int, int], num_classes: int):
        return build_denoiser(self.config, clip_shape, num_classes)


@hookimpl
def mwga_register_models(register):
    register(
        "video_denoiser",
        VideoDenoiserAdapter,
        VideoDenoiserConfig,
        description="small factorised space/time denoiser on a patchified grid (CPU-first)",
    )
