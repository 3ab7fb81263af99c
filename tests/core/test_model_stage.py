"""The ``model`` stage and the adapter contract around it: build to train, load trained, training refused
for an adapter that cannot train, the stage cached and run before the gradients."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig

from mwga_core.api.errors import DataError
from mwga_core.api.models import ModelCannotTrainError, PretrainedWeights, TrainingConfig, load_weights
from mwga_core.diffusion.training import train_denoiser
from mwga_core.pipeline import model_stage
from mwga_core.storage.model_store import model_from_module
from mwga_core.testing import make_context, small_analysed, small_corpus

SHAPE = (5, 16, 16, 1)


def tiny_config(**fields) -> VideoDenoiserConfig:
    training = TrainingConfig(steps=6, batch_size=4, warmup=1, checkpoints=[3], bf16=False, ema=0.0)
    return VideoDenoiserConfig(
        name="video_denoiser",
        channels=8,
        blocks=1,
        diffusion_steps=100,
        sample_steps=2,
        training=training,
        **fields,
    )


def tiny_adapter(**fields) -> VideoDenoiserAdapter:
    return VideoDenoiserAdapter(tiny_config(**fields))


class LoadOnlyAdapter(VideoDenoiserAdapter):
    """An adapter that cannot train; with ``weights`` it comes with a trained model (as a pretrained
    folder would), without them it has nothing to offer."""

    can_train = False

    def __init__(self, config: VideoDenoiserConfig, weights: dict | None = None) -> None:
        super().__init__(config)
        self.weights = weights

    def build_fresh(self, clip_shape, num_classes):  # what a loading-only adapter does not have
        raise AssertionError("a loading-only adapter is never asked for a fresh module")

    def load(self, weights, clip_shape, num_classes):
        from mwga_plugins.models.video_denoiser import build_denoiser

        module = build_denoiser(self.config, clip_shape, num_classes)
        load_weights(module, weights, origin="the pretrained weights")
        return module

    def pretrained(self, clip_shape, num_classes) -> PretrainedWeights | None:
        return None if self.weights is None else PretrainedWeights("pretrained-test", {1: self.weights})


# -- build fresh vs load trained ----------------------------------------------------------------------


def test_a_module_loaded_from_saved_weights_equals_the_trained_one(tmp_path: Path) -> None:
    corpus, ctx = small_corpus(), make_context(tmp_path)
    adapter = tiny_adapter()
    in_memory: dict[int, dict[str, torch.Tensor]] = {}
    train_denoiser(
        adapter,
        corpus.train,
        6,
        ctx,
        lambda step, w: in_memory.update({step: {k: v.clone() for k, v in w.items()}}),
    )
    trained = model_stage.load_or_train_model(adapter, corpus.train, ctx, num_classes=6)
    assert isinstance(trained.checkpoints[6], Path)  # read back from the store's safetensors file
    loaded = trained.module(6)
    assert not loaded.training
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, in_memory[6][name], rtol=0, atol=0)
    x, t = torch.randn(2, 1, 5, 16, 16), torch.tensor([10, 60])
    again = adapter.load(in_memory[6], SHAPE, 6).eval()
    torch.testing.assert_close(
        loaded(x, t, torch.tensor([0, 3])), again(x, t, torch.tensor([0, 3])), rtol=0, atol=0
    )
    fresh = adapter.build_fresh(SHAPE, 6)
    assert not torch.equal(fresh.state_dict()["patch_in.weight"], in_memory[6]["patch_in.weight"])


def test_loading_does_not_touch_the_callers_random_numbers() -> None:
    adapter = tiny_adapter()
    weights = adapter.build_fresh(SHAPE, 6).state_dict()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    adapter.load(weights, SHAPE, 6)
    torch.testing.assert_close(torch.rand(3), expected)


def test_weights_that_do_not_fit_name_the_first_mismatching_keys() -> None:
    adapter = tiny_adapter()
    weights = dict(adapter.build_fresh(SHAPE, 6).state_dict())
    weights.pop("patch_out.bias")
    weights["extra.weight"] = torch.zeros(2)
    weights["patch_in.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        DataError, match=r"missing: patch_out\.bias.*unexpected: extra\.weight.*patch_in\.weight \(3, 3\)"
    ):
        adapter.load(weights, SHAPE, 6)
    with pytest.raises(DataError, match="checkpoint.safetensors do not fit"):
        load_weights(adapter.build_fresh(SHAPE, 6), {}, origin="checkpoint.safetensors")


# -- training is a capability --------------------------------------------------------------------------


def test_training_an_adapter_that_cannot_train_is_refused_clearly(tmp_path: Path) -> None:
    corpus, ctx = small_corpus(), make_context(tmp_path)
    adapter = LoadOnlyAdapter(tiny_config())
    with pytest.raises(ModelCannotTrainError, match="LoadOnlyAdapter cannot train.*no trained weights"):
        model_stage.load_or_train_model(adapter, corpus.train, ctx)
    with pytest.raises(ModelCannotTrainError):
        train_denoiser(adapter, corpus.train, 6, ctx, lambda step, weights: None)
    assert not (Path(ctx.cache_dir) / "models").exists() or not any(
        (Path(ctx.cache_dir) / "models").iterdir()
    )


def test_a_pretrained_model_is_used_without_training(tmp_path: Path, monkeypatch) -> None:
    ctx, train = make_context(tmp_path), small_analysed("train")
    torch.manual_seed(1)
    module = tiny_adapter().build_fresh(SHAPE, 6)
    adapter = LoadOnlyAdapter(tiny_config(), weights=module.state_dict())
    monkeypatch.setattr(
        model_stage, "train_denoiser", lambda *a, **k: pytest.fail("trained a pretrained model")
    )
    gradient = DiffusionGradient(DiffusionGradientConfig(name="diffusion", timesteps=[30], weighting="none"))
    trained = model_stage.prepare_gradient_source(gradient, adapter, train, ctx)
    assert trained.key == "pretrained-test" and ctx.stage_log[-1] == {
        **ctx.stage_log[-1],
        "stage": "model",
        "status": "pretrained",
    }
    assert gradient.checkpoint_id() == "pretrained-test@1"
    # the same weights bound directly give the same gradients
    reference = DiffusionGradient(DiffusionGradientConfig(name="diffusion", timesteps=[30], weighting="none"))
    reference.bind_model(model_from_module(tiny_adapter(), module, SHAPE, 6))
    ours = next(gradient.iter_gradients(train, ctx)).grads
    theirs = next(reference.iter_gradients(train, ctx)).grads
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# -- the stage in a run and in the store --------------------------------------------------------------


def _train_in_process(cache_dir: str, queue) -> None:
    ctx = make_context(cache_dir)
    trained = model_stage.load_or_train_model(tiny_adapter(), small_corpus().train, ctx, num_classes=6)
    queue.put((trained.key, trained.loaded_from_cache, trained.info["training"]["final_loss"]))


def test_two_processes_needing_the_same_model_train_it_once(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    workers = [spawn.Process(target=_train_in_process, args=(str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    # the bounds only stop a hang: never tight, a loaded machine is many times slower than a quiet one
    results = [queue.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join(timeout=3600)
    assert all(worker.exitcode == 0 for worker in workers)
    (key_a, cached_a, loss_a), (key_b, cached_b, loss_b) = results
    assert key_a == key_b and loss_a == loss_b
    assert sorted([cached_a, cached_b]) == [False, True]  # one trained, the other waited and read it


TINY_RUN = [
    "gradient=diffusion",
    "dataset.num_clips=24",
    "dataset.num_frames=5",
    "dataset.size=16",
    "model.channels=8",
    "model.blocks=1",
    "model.diffusion_steps=100",
    "model.training.steps=4",
    "model.training.checkpoints=[]",
    "gradient.timesteps=[30]",
    "feature_store=false",
]


def test_the_run_trains_in_a_model_stage_before_the_gradients_and_reuses_it(compose_config, ctx) -> None:
    from mwga_core.pipeline.run import run_attribution

    first = run_attribution(compose_config(*TINY_RUN), ctx)
    stages = [(s["stage"], s["status"]) for s in ctx.stage_log]
    assert stages.index(("model", "trained")) < [name for name, _ in stages].index("gradients + projection")
    ctx.stage_log.clear()
    second = run_attribution(compose_config(*TINY_RUN, "cache.enabled=false"), ctx)
    assert ("model", "cached") in [(s["stage"], s["status"]) for s in ctx.stage_log]
    np.testing.assert_array_equal(first.scores, second.scores)
