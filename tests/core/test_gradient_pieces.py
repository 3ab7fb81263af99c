"""The pieces a real-gradient source is composed of, each against a naive per-clip loop: the engines
(``mwga_core.diffusion.engines``), the objectives (``.objectives``) and the contrasts (``.contrasts``)."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig

from mwga_core.api.errors import ConfigValueError
from mwga_core.diffusion.contrasts import (
    LossRegions,
    ReverseStaticContrast,
    held_still,
    no_contrast,
    reverse_contrast,
    static_contrast,
    time_reversed,
)
from mwga_core.diffusion.engines import (
    BatchedEngine,
    CheckedEngine,
    EngineSettings,
    ExampleBatch,
    LoopEngine,
    SelectedParameters,
    VmapEngine,
    VmapWithFallback,
    make_engine,
    split_by_cells,
)
from mwga_core.diffusion.objectives import (
    DiffusionLoss,
    DiffusionObjective,
    DTrakOutput,
    motion_mask,
    shared_noise,
)
from mwga_core.testing import make_context

SHAPE = (5, 16, 16, 1)  # (T, H, W, C)
MODEL_SHAPE = (1, 5, 16, 16)  # (C, T, H, W)
N = 5


@pytest.fixture(scope="module")
def adapter() -> VideoDenoiserAdapter:
    return VideoDenoiserAdapter(
        VideoDenoiserConfig(name="video_denoiser", channels=8, blocks=1, diffusion_steps=100)
    )


@pytest.fixture(scope="module")
def module(adapter):
    torch.manual_seed(0)
    module = adapter.build_fresh(SHAPE, 6)
    torch.nn.init.normal_(module.patch_out.weight, std=0.3)  # a zero-ish head would make gradients tiny
    return module.eval()


@pytest.fixture(scope="module")
def batch() -> ExampleBatch:
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand((N, 1, 5, 16, 16), generator=generator) * 2 - 1
    weight = torch.rand((N, 1, 5, 16, 16), generator=generator)
    return ExampleBatch(x0, torch.arange(N) % 6, weight)


def objective_of(adapter, output: str = "loss", timesteps=(10, 40, 70)) -> DiffusionObjective:
    ctx = make_context()
    return DiffusionObjective(
        adapter=adapter,
        output={"loss": DiffusionLoss, "dtrak": DTrakOutput}[output](adapter),
        timesteps=[torch.tensor([t]) for t in timesteps],
        noises=shared_noise(MODEL_SHAPE, list(timesteps), ctx),
        conditional=True,
    )


def naive_gradients(module, names: list[str], objective, batch: ExampleBatch) -> torch.Tensor:
    """One clip at a time: the objective of that clip alone, backward, the selected parameters' grads."""
    rows = []
    for i in range(len(batch)):
        module.zero_grad()
        one = batch.rows(slice(i, i + 1))
        objective(lambda *args: module(*args), one).sum().backward()
        parameters = dict(module.named_parameters())
        rows.append(torch.cat([parameters[name].grad.reshape(-1) for name in names]))
    module.zero_grad()
    return torch.stack(rows)


# -- objectives -------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["loss", "dtrak"])
def test_objective_is_the_mean_over_timesteps_of_the_formula(adapter, module, batch, output) -> None:
    objective = objective_of(adapter, output)
    with torch.no_grad():
        got = objective(module, batch)
        for i in range(N):  # the formula, clip by clip
            x0, w = batch.x0[i], batch.weight[i]
            values = []
            for t, noise in zip((10, 40, 70), objective.noises, strict=True):
                ab = adapter.schedule.alpha_bars[t].float()
                x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
                prediction = module(x_t[None], torch.tensor([t]), batch.labels[i : i + 1])[0]
                if output == "loss":
                    values.append((w * (prediction - noise) ** 2).mean())
                else:
                    values.append((w * prediction**2).mean())
            torch.testing.assert_close(got[i], torch.stack(values).mean(), rtol=1e-5, atol=1e-7)
        # the terms' shares add up to the whole objective
        parts = sum(objective(module, batch, terms=[k]) for k in range(3))
        torch.testing.assert_close(parts, got, rtol=1e-6, atol=1e-8)


def test_shared_noise_is_seeded_per_timestep_and_the_same_for_every_call() -> None:
    a, b = (
        shared_noise(MODEL_SHAPE, [10, 40], make_context(seed=0)),
        shared_noise(MODEL_SHAPE, [10, 40], make_context(seed=0)),
    )
    assert a[0].shape == (1, 5, 16, 16) and not torch.equal(a[0], a[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], shared_noise(MODEL_SHAPE, [10, 40], make_context(seed=1))[0])


def test_motion_mask_is_min_max_normalised_per_clip() -> None:
    flows = np.zeros((2, 3, 4, 4, 2), dtype=np.float32)
    flows[0, :, :2, :, 0] = 2.0  # top half moves
    flows[1] = 1.0  # uniform motion: no pixel stands out
    mask = motion_mask(flows, (4, 4, 4))
    assert mask.shape == (2, 4, 4, 4)
    assert mask[0].max() == pytest.approx(1.0, abs=1e-5) and mask[0].min() == 0.0
    assert mask[0, :, :2].min() > 0.99 and mask[0, :, 2:].max() == 0.0
    assert np.abs(mask[1]).max() < 1e-5
    assert motion_mask(flows, (2, 2, 2)).shape == (2, 2, 2, 2)


# -- engines ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("params", ["all", "temporal"])
@pytest.mark.parametrize("engine", ["vmap", "batched"])
def test_engines_equal_a_per_clip_loop(adapter, module, batch, engine, params) -> None:
    names = [n for n, _ in module.named_parameters() if params == "all" or "temporal" in n]
    selection = SelectedParameters.of(module, names)
    objective = objective_of(adapter)
    settings = EngineSettings(chunk_size=2)  # ragged chunks: 2 + 2 + 1
    fast = (VmapEngine if engine == "vmap" else BatchedEngine)(**vars(settings)).gradients(
        selection, objective, batch
    )
    naive = naive_gradients(module, names, objective, batch)
    assert fast.shape == (N, sum(selection.sizes())) and naive.abs().max() > 0
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-7)


def test_position_cells_sum_to_the_whole_gradient(adapter, module, batch) -> None:
    selection = SelectedParameters.of(module, ["blocks.0.temporal.weight"])
    objective = objective_of(adapter)
    whole = BatchedEngine(chunk_size=4).gradients(selection, objective, batch)
    cells = BatchedEngine(chunk_size=4, position_cells=2).gradients(selection, objective, batch)
    assert cells.shape == (N, 4 * whole.shape[1])
    torch.testing.assert_close(cells.reshape(N, 4, -1).sum(1), whole, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("engine", ["vmap", "loop", "batched", "checked"])
def test_loss_cells_equal_one_cell_at_a_time(adapter, module, batch, engine) -> None:
    """A batch with loss cells: every engine gives each cell's gradient (the weight times its mask),
    side by side; the batched engine from one forward pass per term shared by the cells."""
    names = [n for n, _ in module.named_parameters() if "temporal" in n or "patch_out" in n]
    selection = SelectedParameters.of(module, names)
    objective = objective_of(adapter)
    masks = torch.zeros((3, 5, 16, 16))
    masks[0, :, :8], masks[1, :, 8:, :8], masks[2, :, 8:, 8:] = 1, 1, 1
    celled = dataclasses.replace(batch, cells=masks)
    settings = EngineSettings(chunk_size=2)
    chosen = {
        "vmap": VmapEngine(**vars(settings)),
        "loop": LoopEngine(**vars(settings)),
        "batched": BatchedEngine(**vars(settings)),
        "checked": make_engine("batched", settings),
    }[engine]
    got = chosen.gradients(selection, objective, celled)
    expected = [
        naive_gradients(module, names, objective, dataclasses.replace(batch, weight=batch.weight * mask))
        for mask in masks
    ]
    assert got.shape == (N, 3 * sum(selection.sizes())) and all(e.abs().max() > 0 for e in expected)
    torch.testing.assert_close(got, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-7)
    # the objective itself: one column per cell
    with torch.no_grad():
        columns = objective(module, celled)
        one = objective(module, dataclasses.replace(batch, weight=batch.weight * masks[1]))
    assert columns.shape == (N, 3)
    torch.testing.assert_close(columns[:, 1], one)


def test_the_checked_engine_refuses_a_model_that_mixes_examples(adapter, batch) -> None:
    class BatchMixer(torch.nn.Module):
        """Subtracts the batch mean: each example's output depends on the others."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Linear(16, 16)

        def forward(self, x, t, labels=None):
            y = self.scale(x)
            return y - y.mean(dim=0, keepdim=True)

    mixer = BatchMixer()
    selection = SelectedParameters.of(mixer, ["scale.weight"])
    engine = make_engine("batched", EngineSettings(chunk_size=4))
    assert isinstance(engine, CheckedEngine)
    with pytest.raises(ConfigValueError, match="gradient.engine.*vmap"):
        engine.gradients(selection, objective_of(adapter), batch)
    assert isinstance(make_engine("vmap", EngineSettings()), VmapWithFallback)
    assert isinstance(make_engine("loop", EngineSettings()), LoopEngine)


def test_the_loop_engine_equals_a_naive_loop(adapter, module, batch) -> None:
    names = [n for n, _ in module.named_parameters()][:6]
    objective = objective_of(adapter)
    selection = SelectedParameters.of(module, names)
    loop = LoopEngine(chunk_size=2).gradients(selection, objective, batch)
    naive = naive_gradients(module, names, objective, batch)
    assert float(loop.abs().max()) > 0
    torch.testing.assert_close(loop, naive, rtol=1e-5, atol=1e-8)


class ConditionedDenoiser(torch.nn.Module):
    """x -> linear(x) + the mean of a per-example embedding, which a caption would give: it takes the
    embedding as a keyword input, as diffusers denoisers take encoder_hidden_states."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(16, 16)
        self.text = torch.nn.Linear(4, 16)

    def forward(self, x, t, labels=None, embedding=None):
        return self.mix(x) * self.text(embedding).mean(1)[:, None, None, None, :]


def test_every_engine_passes_the_per_example_condition(adapter, batch) -> None:
    torch.manual_seed(0)
    model = ConditionedDenoiser()
    embedding = torch.randn((N, 3, 4), generator=torch.Generator().manual_seed(5))
    conditioned = ExampleBatch(batch.x0, batch.labels, batch.weight, {"embedding": embedding})
    objective = objective_of(adapter)
    selection = SelectedParameters.of(model, ["mix.weight", "text.weight"])
    loop = LoopEngine(chunk_size=2).gradients(selection, objective, conditioned)
    vmapped = VmapEngine(chunk_size=2).gradients(selection, objective, conditioned)
    batched = make_engine("batched", EngineSettings(chunk_size=2)).gradients(
        selection, objective, conditioned
    )
    torch.testing.assert_close(vmapped, loop, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-7)
    # each example's gradient follows its own embedding: another embedding gives another gradient
    swapped = ExampleBatch(batch.x0, batch.labels, batch.weight, {"embedding": embedding.flip(0)})
    assert not torch.allclose(LoopEngine(chunk_size=2).gradients(selection, objective, swapped), loop)


class DataDependent(torch.nn.Module):
    """Control flow on a tensor's value, which torch.func.vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Linear(16, 16)

    def forward(self, x, t, labels=None):
        y = self.scale(x)
        return y if float(y.sum()) > -1e9 else -y


def test_vmap_falls_back_to_the_loop_with_a_warning(adapter, batch) -> None:
    torch.manual_seed(0)
    model = DataDependent()
    selection = SelectedParameters.of(model, ["scale.weight"])
    objective = objective_of(adapter)
    with pytest.raises(RuntimeError):
        VmapEngine().gradients(selection, objective, batch)
    engine = make_engine("vmap", EngineSettings(chunk_size=2))
    with pytest.warns(UserWarning, match="engine=vmap cannot batch DataDependent"):
        fallback = engine.gradients(selection, objective, batch)
    torch.testing.assert_close(fallback, LoopEngine().gradients(selection, objective, batch))


# -- contrasts ----------------------------------------------------------------------------------------


def toy_gradient(batch: ExampleBatch) -> torch.Tensor:
    """A per-clip 'gradient' that is odd-and-even in time and linear in the weight: (n, 3)."""
    x, w = batch.x0, torch.ones_like(batch.x0[:, :1]) if batch.weight is None else batch.weight
    t = torch.arange(x.shape[2], dtype=x.dtype).reshape(1, 1, -1, 1, 1)
    odd = (w * x * t).flatten(1).sum(1)
    even = (w * x**2).flatten(1).sum(1)
    pairs = (w[:, :, 1:] * x[:, :, 1:] * x[:, :, :-1]).flatten(1).sum(1)
    return torch.stack([odd, even, pairs], dim=1)


def per_clip(batch: ExampleBatch, fn) -> torch.Tensor:
    """``fn`` of each clip alone (numpy-flipped copies, no torch views), stacked."""
    rows = []
    for i in range(len(batch)):
        x = batch.x0[i : i + 1].numpy()
        w = batch.weight[i : i + 1].numpy()
        rows.append(fn(x, w))
    return torch.stack(rows)


def g(x: np.ndarray, w: np.ndarray) -> torch.Tensor:
    return toy_gradient(
        ExampleBatch(
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.zeros(1),
            torch.from_numpy(np.ascontiguousarray(w)),
        )
    )[0]


def still(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :, x.shape[2] // 2 : x.shape[2] // 2 + 1], x.shape[2], axis=2)


def test_counterfactual_clips(batch) -> None:
    np.testing.assert_array_equal(time_reversed(batch).x0.numpy(), batch.x0.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(time_reversed(batch).weight.numpy(), batch.weight.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(held_still(batch).x0.numpy(), still(batch.x0.numpy()))
    assert held_still(batch).weight is batch.weight


def test_contrasts_equal_a_per_clip_loop(batch) -> None:
    flip = lambda a: a[:, :, ::-1]  # noqa: E731
    torch.testing.assert_close(no_contrast(toy_gradient, batch), per_clip(batch, g))
    odd = per_clip(batch, lambda x, w: (g(x, w) - g(flip(x), flip(w))) / 2)
    torch.testing.assert_close(reverse_contrast(toy_gradient, batch), odd)
    torch.testing.assert_close(
        static_contrast(toy_gradient, batch), per_clip(batch, lambda x, w: g(x, w) - g(still(x), w))
    )
    even_minus_still = per_clip(batch, lambda x, w: (g(x, w) + g(flip(x), flip(w))) / 2 - g(still(x), w))
    both = ReverseStaticContrast(0.25)(toy_gradient, batch)
    torch.testing.assert_close(both, torch.cat([odd, 0.25 * even_minus_still], dim=1))


def test_loss_regions_equal_a_per_cell_loop_and_sum_to_the_whole(batch) -> None:
    # a gradient function serves the cells LossRegions hands it; split_by_cells does it one at a time
    split = LossRegions(2, (5, 16, 16)).wrap(partial(split_by_cells, toy_gradient))(batch)
    assert split.shape == (N, 4 * 3)
    cells = []
    for r in range(2):
        for c in range(2):
            mask = np.zeros((5, 16, 16), dtype=np.float32)
            mask[:, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 1
            cells.append(per_clip(batch, lambda x, w, mask=mask: g(x, w * mask)))
    torch.testing.assert_close(split, torch.cat(cells, dim=1))
    torch.testing.assert_close(split.reshape(N, 4, 3).sum(1), toy_gradient(batch), rtol=1e-5, atol=1e-4)
    assert LossRegions(1, (5, 16, 16)).wrap(toy_gradient) is toy_gradient


class TupleBlock(torch.nn.Module):
    """A block that owns a parameter and returns a tuple, as transformer blocks do (Wan's modulation
    table): the batched engine cannot read its per-sample gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(16))

    def forward(self, x):
        return x * self.table, x


class TupleDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleBlock()

    def forward(self, x, t, labels=None):
        return self.block(x)[0]


def test_the_batched_engine_hands_a_model_it_cannot_read_to_vmap_with_a_warning(adapter, batch) -> None:
    torch.manual_seed(0)
    model = TupleDenoiser()
    selection = SelectedParameters.of(model, ["block.table"])
    objective = objective_of(adapter)
    engine = make_engine("batched", EngineSettings(chunk_size=2))
    with pytest.warns(
        UserWarning, match="returns no single tensor; computing per-example gradients with engine=vmap"
    ):
        handed = engine.gradients(selection, objective, batch)
    torch.testing.assert_close(
        handed, LoopEngine().gradients(selection, objective, batch), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ConfigValueError, match="region_split"):
        make_engine("batched", EngineSettings(chunk_size=2), position_cells=2).gradients(
            selection, objective, batch
        )
