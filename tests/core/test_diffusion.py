"""Noise schedules, forward noising and the DDIM sampler."""

from __future__ import annotations

import pytest
import torch

from mwga_core.api.errors import ConfigValueError
from mwga_core.diffusion.schedules import add_noise, ddim_sample, ddim_timesteps, make_schedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bars_decrease_from_one_towards_zero(kind: str) -> None:
    schedule = make_schedule(kind, 1000)
    ab = schedule.alpha_bars
    assert ab.shape == (1000,)
    assert (ab[1:] < ab[:-1]).all()
    assert 0.99 < float(ab[0]) <= 1.0
    assert float(ab[-1]) < 0.01
    torch.testing.assert_close(ab, torch.cumprod(1 - schedule.betas, 0))


def test_linear_betas_are_the_ddpm_ones() -> None:
    schedule = make_schedule("linear", 1000)
    assert float(schedule.betas[0]) == pytest.approx(1e-4)
    assert float(schedule.betas[-1]) == pytest.approx(0.02)


def test_unknown_schedule_names_the_choices() -> None:
    with pytest.raises(ConfigValueError, match="linear"):
        make_schedule("quadratic")


def test_add_noise_matches_the_closed_form() -> None:
    schedule = make_schedule("cosine", 100)
    x0, noise = torch.randn(3, 1, 4, 8, 8), torch.randn(3, 1, 4, 8, 8)
    t = torch.tensor([0, 50, 99])
    x_t = add_noise(schedule, x0, t, noise)
    for i in range(3):
        ab = schedule.alpha_bars[t[i]].float()
        torch.testing.assert_close(x_t[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * noise[i])


def test_ddim_timesteps_descend_and_cover_both_ends() -> None:
    steps = ddim_timesteps(1000, 10)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 10
    assert steps == sorted(steps, reverse=True)


def test_ddim_with_the_true_noise_recovers_x0() -> None:
    # With an oracle that knows x0, every DDIM step lands exactly on x0.
    schedule = make_schedule("linear", 200)
    x0 = torch.rand(2, 1, 3, 4, 4) * 2 - 1
    alpha_bars = schedule.alpha_bars

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alpha_bars[t].float().reshape(-1, 1, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    sample = ddim_sample(schedule, oracle, torch.randn(2, 1, 3, 4, 4), sample_steps=5)
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=1e-4)
