"""model=diffusers on a tiny re-randomised model of every supported family: it loads, predicts in the
input's shape, and its per-example gradients (torch.func, the way mwga computes them) equal a plain
per-clip autograd loop and are not zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import diffusers_tiny as tiny  # noqa: E402
import torch  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402
from mwga_plugins.models.diffusers.families import HIDDEN, MASK, POOLED  # noqa: E402

from mwga_core.api.models import weights_in_memory  # noqa: E402
from mwga_core.diffusion.engines import EngineSettings, ExampleBatch, SelectedParameters, make_engine  # noqa: E402
from mwga_core.diffusion.objectives import DiffusionLoss, DiffusionObjective  # noqa: E402

#: small pixel-space clips: 5 frames of 8 x 8 (every family's patches divide them)
CLIP_SHAPE = (5, 8, 8, 3)
TEXT_LENGTH = 8  # CogVideoX's tiny max_text_seq_length; short prompts keep the tests fast


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: tiny.save_family(root / family, family, seed=i) for i, family in enumerate(tiny.FAMILIES)}


def adapter_for(folder: Path, **fields) -> DiffusersAdapter:
    return DiffusersAdapter(
        DiffusersModelConfig(name="diffusers", path=str(folder), text_length=TEXT_LENGTH, **fields)
    )


def loaded(adapter: DiffusersAdapter):
    weights = adapter.pretrained(CLIP_SHAPE, 1).checkpoints[0]
    return adapter.load(weights_in_memory(weights), CLIP_SHAPE, 1)


def clips(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, *CLIP_SHAPE)).astype(np.float32)


def objective_at(adapter: DiffusersAdapter, timesteps=(150, 600)) -> DiffusionObjective:
    """MSE to the family's target, averaged over ``timesteps``, one fixed noise draw each."""
    shape = adapter.model_shape(CLIP_SHAPE)
    generator = torch.Generator().manual_seed(1)
    noises = [torch.randn(shape, generator=generator) for _ in timesteps]
    steps = [torch.tensor([t]) for t in timesteps]
    return DiffusionObjective(adapter, DiffusionLoss(adapter), steps, noises, conditional=False)


def loop_gradients(module, objective: DiffusionObjective, batch: ExampleBatch) -> torch.Tensor:
    """The reference: one plain forward and backward per clip, written out without mwga's engines."""
    params = [p for _, p in module.named_parameters()]
    rows = []
    for i in range(len(batch)):
        total = 0.0
        for t, noise in zip(objective.timesteps, objective.noises, strict=True):
            x0 = batch.x0[i : i + 1]
            condition = {name: value[i : i + 1] for name, value in batch.condition.items()}
            prediction = module(objective.adapter.add_noise(x0, t, noise[None]), t, None, **condition)
            target = objective.adapter.target(x0, noise[None], t)
            total = total + ((prediction - target) ** 2).mean() / len(objective.timesteps)
        grads = torch.autograd.grad(total, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).flatten()
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def vmap_gradients(module, objective, batch) -> torch.Tensor:
    names = [name for name, _ in module.named_parameters()]
    engine = make_engine("vmap", EngineSettings(chunk_size=2))
    return engine.gradients(SelectedParameters.of(module, names), objective, batch)


def assert_same_gradients(fast: torch.Tensor, reference: torch.Tensor) -> None:
    norms = reference.norm(dim=1)
    assert (norms > 0).all(), "every clip must have a non-zero gradient (re-randomised weights)"
    assert float((reference != 0).float().mean()) > 0.5, "most parameters must get a gradient"
    error = float(((fast - reference).norm(dim=1) / norms).max())
    assert error < 1e-4, f"per-example gradients differ from the per-clip loop by {error:.2g}"


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_every_family_predicts_and_its_per_example_gradients_equal_a_loop(folders, family: str) -> None:
    adapter = adapter_for(folders[family])
    module = loaded(adapter)
    assert adapter.model_shape(CLIP_SHAPE) == (3, *CLIP_SHAPE[:3])  # pixel space: no vae/ in the folder
    assert adapter.time_reversal_commutes and adapter.encoder_key() is None
    x0 = adapter.encode(clips())
    assert tuple(x0.shape) == (3, 3, *CLIP_SHAPE[:3]) and float(x0.min()) >= -1 and float(x0.max()) <= 1
    with torch.no_grad():
        prediction = module(x0, torch.tensor([5, 500, 900]), None)
    assert prediction.shape == x0.shape and torch.isfinite(prediction).all()
    objective = objective_at(adapter)
    batch = ExampleBatch(x0, torch.zeros(3, dtype=torch.int64))
    assert_same_gradients(vmap_gradients(module, objective, batch), loop_gradients(module, objective, batch))
    temporal = adapter.temporal_parameter_names(module)
    names = {name for name, _ in module.named_parameters()}
    assert temporal and set(temporal) < names and all(name.startswith("denoiser.") for name in temporal)


@pytest.mark.parametrize("family", ["ltx", "hunyuan", "mochi"])
def test_per_example_text_masks_are_batched_or_fall_back_to_the_loop(folders, family: str) -> None:
    """Captions of different lengths give each clip its own attention mask (and pooled text): vmap batches
    them, or (Mochi's attention selects tokens by mask value) falls back to the loop with a warning."""
    adapter = adapter_for(folders[family])
    module = loaded(adapter)
    generator = torch.Generator().manual_seed(2)
    family_dims = adapter.family
    condition = {
        HIDDEN: torch.randn((3, TEXT_LENGTH, family_dims.text_dim), generator=generator),
        MASK: (torch.arange(TEXT_LENGTH)[None] < torch.tensor([[2], [5], [8]])).float(),
    }
    if family_dims.pooled_dim:
        condition[POOLED] = torch.randn((3, family_dims.pooled_dim), generator=generator)
    batch = ExampleBatch(adapter.encode(clips()), torch.zeros(3, dtype=torch.int64), None, condition)
    objective = objective_at(adapter, timesteps=(400,))
    with pytest.warns(UserWarning, match="one clip at a time") if family == "mochi" else _no_warning():
        fast = vmap_gradients(module, objective, batch)
    assert_same_gradients(fast, loop_gradients(module, objective, batch))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
