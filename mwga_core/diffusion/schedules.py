"""DDPM noise schedules, forward noising and the DDIM sampler, for any eps-predicting denoiser.

A schedule of T steps holds betas ``b_t`` and ``alpha_bar_t = prod_{s<=t} (1 - b_s)`` for t = 0 .. T-1.
Forward noising (Ho et al. 2020): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.
DDIM (Song et al. 2021, eta = 0) walks a subsequence of timesteps deterministically from pure noise.

torch is imported inside functions: this module is imported by plugin code that ``mwga --help`` loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mwga_core.api.errors import ConfigValueError

if TYPE_CHECKING:
    import torch

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """A DDPM schedule.

    Attributes:
        betas: (T,) float64 tensor of per-step noise variances.
        alpha_bars: (T,) float64 tensor, cumulative products of ``1 - betas``; decreasing in t.
    """

    betas: torch.Tensor
    alpha_bars: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])


def make_schedule(
    kind: str = "cosine", num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """Linear betas (DDPM) or the cosine alpha-bar schedule (Nichol & Dhariwal 2021, betas clipped at 0.999).

    Args:
        kind: ``linear`` or ``cosine``.
        num_steps: T, the number of diffusion steps.
        beta_start, beta_end: first and last beta of the linear schedule (ignored by ``cosine``).
    """
    import torch

    if kind not in SCHEDULES:
        raise ConfigValueError("schedule", kind, f"one of {list(SCHEDULES)}")
    if num_steps < 2:
        raise ConfigValueError("num_steps", num_steps, "an integer >= 2")
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:
        offset = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    alpha_bars = torch.cumprod(1 - betas, dim=0)
    return NoiseSchedule(betas=betas, alpha_bars=alpha_bars)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim)).to(like.dtype)


def add_noise(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Forward noising ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``.

    Shape:
        x0, noise: (B, ...) float.
        t: (B,) int64 timesteps in [0, T), or a 0-d tensor shared by the batch.
        returns: like ``x0``.
    """
    alpha_bar = schedule.alpha_bars.to(x0.device)[t]
    return _broadcast(alpha_bar.sqrt(), x0) * x0 + _broadcast((1 - alpha_bar).sqrt(), x0) * noise


def ddim_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """``sample_steps`` evenly spaced timesteps from T-1 down to 0 (descending, distinct)."""
    if not 1 <= sample_steps <= num_steps:
        raise ConfigValueError("sample_steps", sample_steps, f"an integer in [1, {num_steps}]")
    ts = sorted({round(i * (num_steps - 1) / max(sample_steps - 1, 1)) for i in range(sample_steps)})
    return ts[::-1]


def ddim_sample(
    schedule: NoiseSchedule,
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sample_steps: int = 50,
    clip_x0: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` to a sample.

    Args:
        predict_noise: ``f(x_t, t) -> eps``, with t a (B,) int64 tensor.
        noise: the starting point x_T.
        sample_steps: how many denoising steps.
        clip_x0: clamp each step's x0 estimate to this range (None: no clamping).

    Shape:
        noise: (B, ...); returns: like ``noise``.
    """
    import torch

    alpha_bars = schedule.alpha_bars.to(noise.device)
    x = noise
    steps = ddim_timesteps(schedule.num_steps, sample_steps)
    for index, t in enumerate(steps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = predict_noise(x, t_batch).to(x.dtype)
        ab_t = alpha_bars[t].to(x.dtype)
        x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        if clip_x0 is not None:
            x0 = x0.clamp(*clip_x0)
            eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        ab_prev = alpha_bars[steps[index + 1]].to(x.dtype) if index + 1 < len(steps) else x.new_tensor(1.0)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x
