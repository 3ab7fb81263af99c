"""model=diffusers objectives: each family's noising, target and denoiser timestep against the formula,
read from the scheduler config as the pipelines save it."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import torch  # noqa: E402
from mwga_plugins.models.diffusers.objectives import flow_shift, make_objective, objective_kind  # noqa: E402

from mwga_core.api.errors import ConfigValueError, DataError  # noqa: E402


def known_input():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn((2, 3, 5, 4, 4), generator=generator)
    noise = torch.randn((1, 3, 5, 4, 4), generator=generator)
    return x0, noise, torch.tensor([10, 700])


def scheduler_config(scheduler) -> dict:
    return {"_class_name": type(scheduler).__name__, **dict(scheduler.config)}


def test_eps_and_v_use_the_schedulers_own_alpha_bars() -> None:
    import diffusers

    ddim = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cog = diffusers.CogVideoXDDIMScheduler(
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
        beta_schedule="scaled_linear",
    )
    x0, noise, t = known_input()
    for scheduler, kind in ((ddim, "eps"), (cog, "v")):
        objective = make_objective("auto", scheduler_config(scheduler), 1000)
        assert objective.kind == kind
        ab = scheduler.alphas_cumprod.double()[t].float().reshape(-1, 1, 1, 1, 1)
        torch.testing.assert_close(
            objective.add_noise(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        )
        expected = noise.expand_as(x0) if kind == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        torch.testing.assert_close(objective.target(x0, noise, t), expected)
        torch.testing.assert_close(objective.model_timesteps[t], t.float())
    # CogVideoX's SNR shift and zero-terminal-SNR rescaling change alpha_bar: the table is not DDIM's
    cog_table = make_objective("auto", scheduler_config(cog), 1000).alpha_bars
    assert cog_table[-1] < 1e-6 < float(ddim.alphas_cumprod[-1])


@pytest.mark.parametrize(
    ("scheduler_kwargs", "shift"),
    [
        ({"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}, 3.0),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0}, 7.0),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "use_dynamic_shifting": True}, 1.0),
    ],
)  # fmt: skip
def test_flow_matching_is_interpolation_with_velocity_target(scheduler_kwargs: dict, shift: float) -> None:
    x0, noise, t = known_input()
    objective = make_objective("auto", scheduler_kwargs, 1000)
    assert objective.kind == "flow" and flow_shift(scheduler_kwargs) == shift
    u = (t.double() + 1) / 1000
    sigma = (shift * u / (1 + (shift - 1) * u)).float().reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(objective.add_noise(x0, t, noise), (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(objective.target(x0, noise, t), (noise - x0).expand_as(x0))
    torch.testing.assert_close(objective.model_timesteps[t], 1000 * sigma.flatten())


def test_flow_sigmas_match_flow_match_euler_training_sigmas() -> None:
    import diffusers

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    objective = make_objective("auto", scheduler_config(scheduler), 1000)
    # the scheduler's sigmas run from the noisiest training timestep down; index k is the (k+1)-th lowest
    torch.testing.assert_close(
        objective.sigmas.float(), scheduler.sigmas.flip(0).float(), atol=1e-6, rtol=1e-5
    )


def test_mochi_inverts_the_flow_convention() -> None:
    x0, noise, t = known_input()
    objective = make_objective(
        "auto", {"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, 1000
    )
    assert objective.kind == "flow_inverted"
    sigma = ((t.double() + 1) / 1000).float().reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(objective.add_noise(x0, t, noise), (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(objective.target(x0, noise, t), (x0 - noise))
    torch.testing.assert_close(objective.model_timesteps[t], 1000 * (1 - sigma.flatten()))


def test_objective_errors_name_the_field() -> None:
    with pytest.raises(ConfigValueError, match="^diffusion_steps=500.*1000"):
        make_objective("auto", {"_class_name": "DDIMScheduler"}, 500)
    with pytest.raises(DataError, match="predicts 'sample'"):
        objective_kind({"_class_name": "DDIMScheduler", "prediction_type": "sample"})
    assert make_objective("v", {"_class_name": "DDIMScheduler"}, 1000).kind == "v"  # an explicit override
