"""The training objective of a diffusers model, read from its scheduler config.

mwga hands a model a timestep *index* t in [0, N) (N = the scheduler's ``num_train_timesteps``); the
:class:`Objective` maps it to what the family was trained with:

======================  ==================================  =============================  ===================
kind                    noisy input x_t                     target of the prediction       denoiser timestep
======================  ==================================  =============================  ===================
``eps`` (UNet3D,        sqrt(ab_t) x0 + sqrt(1-ab_t) eps    eps                            t
AnimateDiff)
``v`` (CogVideoX)       sqrt(ab_t) x0 + sqrt(1-ab_t) eps    sqrt(ab_t) eps - sqrt(1-ab_t)  t
                                                            x0
``flow`` (Wan, LTX,     (1 - s_t) x0 + s_t eps              eps - x0                       N s_t
HunyuanVideo)
``flow_inverted``       (1 - s_t) x0 + s_t eps              x0 - eps                       N (1 - s_t)
(Mochi)
======================  ==================================  =============================  ===================

ab_t is the scheduler's own ``alphas_cumprod`` (its beta schedule, SNR shift and zero-terminal-SNR
rescaling included: the scheduler class is built from its config). The flow sigma of index t is the
scheduler's training sigma ``s_t = shift u / (1 + (shift - 1) u)``, u = (t + 1) / N, with ``shift`` the
config's static ``shift`` (FlowMatchEuler; 1 with ``use_dynamic_shifting``, whose shift depends on the
resolution) or ``flow_shift`` (UniPC / DPM with ``use_flow_sigmas``). ``FlowMatchEulerDiscreteScheduler``
has no ``add_noise`` for arbitrary timesteps, so x_t is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mwga_core.api.errors import ConfigValueError, DataError

if TYPE_CHECKING:
    import torch

#: ``model.objective`` values; ``auto`` reads the scheduler config
OBJECTIVES = ("auto", "eps", "v", "flow", "flow_inverted")
FLOW_KINDS = ("flow", "flow_inverted")


def objective_kind(scheduler: dict[str, Any]) -> str:
    """The objective a scheduler config trains: eps, v, flow or flow_inverted."""
    name = str(scheduler.get("_class_name", ""))
    prediction = scheduler.get("prediction_type", "epsilon")
    if name.startswith("FlowMatch"):
        return "flow_inverted" if scheduler.get("invert_sigmas") else "flow"
    if prediction == "flow_prediction" or scheduler.get("use_flow_sigmas"):
        return "flow"
    if prediction == "v_prediction":
        return "v"
    if prediction == "epsilon":
        return "eps"
    raise DataError(
        f"scheduler {name} predicts {prediction!r}: mwga attributes eps, v_prediction and flow-matching models"
    )


def flow_shift(scheduler: dict[str, Any]) -> float:
    """The static shift of a flow scheduler's training sigmas (1 when it shifts by resolution)."""
    if str(scheduler.get("_class_name", "")).startswith("FlowMatch"):
        return 1.0 if scheduler.get("use_dynamic_shifting") else float(scheduler.get("shift", 1.0))
    return float(scheduler.get("flow_shift") or 1.0)


@dataclass(frozen=True)
class Objective:
    """Per-index tables of one family's objective (see the module docstring).

    Attributes:
        kind: eps, v, flow or flow_inverted.
        model_timesteps: (N,) float32, the timestep the denoiser receives for index t.
        alpha_bars: (N,) float64 ab_t for eps / v, else None.
        sigmas: (N,) float64 s_t for the flow kinds, else None.
    """

    kind: str
    model_timesteps: torch.Tensor
    alpha_bars: torch.Tensor | None
    sigmas: torch.Tensor | None

    @property
    def steps(self) -> int:
        return int(self.model_timesteps.shape[0])

    def _coefficient(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped to broadcast over (B, C, T, H, W), in ``like``'s dtype and device."""
        return table.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t. Shape: x0 (B, C, T, H, W), noise broadcastable to it, t (B,) int64 -> (B, C, T, H, W)."""
        if self.kind in FLOW_KINDS:
            sigma = self._coefficient(self.sigmas, t, x0)
            return (1 - sigma) * x0 + sigma * noise
        alpha_bar = self._coefficient(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the prediction regresses on. Shape: as :meth:`add_noise`."""
        if self.kind == "eps":
            return noise.expand_as(x0)
        if self.kind == "flow":
            return noise - x0
        if self.kind == "flow_inverted":
            return x0 - noise
        alpha_bar = self._coefficient(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def make_objective(requested: str, scheduler: dict[str, Any], steps: int) -> Objective:
    """The objective ``requested`` (``auto``: the scheduler's) with the scheduler's tables.

    Args:
        requested: ``model.objective``.
        scheduler: the scheduler config (the folder's, or the family's default).
        steps: ``model.diffusion_steps``, which must be the scheduler's ``num_train_timesteps``.
    """
    import torch

    n = int(scheduler.get("num_train_timesteps", 1000))
    if steps != n:
        raise ConfigValueError("diffusion_steps", steps, f"{n}, the scheduler's num_train_timesteps")
    kind = objective_kind(scheduler) if requested == "auto" else requested
    if kind in FLOW_KINDS:
        u = torch.arange(1, n + 1, dtype=torch.float64) / n
        shift = flow_shift(scheduler)
        sigmas = shift * u / (1 + (shift - 1) * u)
        level = sigmas if kind == "flow" else 1 - sigmas
        return Objective(kind, (n * level).float(), None, sigmas)
    return Objective(kind, torch.arange(n, dtype=torch.float32), _alpha_bars(scheduler), None)


def _alpha_bars(scheduler: dict[str, Any]) -> torch.Tensor:
    """The scheduler's ``alphas_cumprod`` (N,) float64, from the scheduler class built from its config."""
    import diffusers
    import torch

    name = str(scheduler.get("_class_name", "DDPMScheduler"))
    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None:
        raise DataError(f"scheduler {name!r} is not a diffusers scheduler class")
    built = scheduler_class.from_config(scheduler)
    alpha_bars = getattr(built, "alphas_cumprod", None)
    if alpha_bars is None:
        raise DataError(f"scheduler {name} has no alphas_cumprod: mwga cannot noise eps / v models with it")
    return torch.as_tensor(alpha_bars, dtype=torch.float64)
