"""The trainer and the model stage around it: it learns, it caches in the model store, it writes
safetensors atomically, it is deterministic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig
from safetensors.torch import load_file

from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import TrainingConfig
from mwga_core.api.trained_model import TrainedModel
from mwga_core.diffusion import training
from mwga_core.diffusion.sampling import sample_per_class
from mwga_core.pipeline import model_stage
from mwga_core.testing import make_context, small_corpus


def tiny_adapter(
    steps: int = 40,
    checkpoints: tuple[int, ...] = (20,),
    label_dropout: float = 0.0,
    objective: str = "eps",
    **fields,
) -> VideoDenoiserAdapter:
    # eps: with the v default the untrained loss already starts low and 40 steps only show its batch
    # noise (per-timestep losses vary 3x), so "the loss falls" would measure luck, not the trainer.
    fields.setdefault("parametrization", "eps")
    return VideoDenoiserAdapter(
        VideoDenoiserConfig(
            name="video_denoiser",
            channels=8,
            blocks=1,
            diffusion_steps=100,
            sample_steps=4,
            training=TrainingConfig(
                steps=steps,
                batch_size=8,
                lr=1e-2,
                warmup=5,
                checkpoints=list(checkpoints),
                bf16=False,
                label_dropout=label_dropout,
                objective=objective,
            ),
            **fields,
        )
    )


def train(adapter: VideoDenoiserAdapter, clips, ctx) -> TrainedModel:
    """The model stage on ``clips`` with 6 classes."""
    return model_stage.load_or_train_model(adapter, clips, ctx, num_classes=6)


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(num_clips=12, num_frames=5, size=16)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One tiny model trained once for the whole module (40 steps, checkpoints at 20 and 40)."""
    ctx = make_context(tmp_path_factory.mktemp("trained"))
    return train(tiny_adapter(), corpus.train, ctx), ctx


def test_training_reduces_the_loss(trained) -> None:
    log = trained[0].info["training"]
    assert log["final_loss"] < 0.8 * log["first_loss"]
    assert log["steps"] == 40 and log["seconds"] > 0 and log["cpu_seconds"] > 0


def test_second_call_loads_from_the_cache(corpus, trained, monkeypatch) -> None:
    first, ctx = trained

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again despite a complete cache entry")

    monkeypatch.setattr(model_stage, "train_denoiser", must_not_train)
    ctx.stage_log.clear()
    second = train(tiny_adapter(), corpus.train, ctx)
    assert second.loaded_from_cache and second.folder == first.folder and second.key == first.key
    assert [(s["stage"], s["status"]) for s in ctx.stage_log] == [("model", "cached")]
    for name, tensor in first.module().state_dict().items():
        torch.testing.assert_close(second.module().state_dict()[name], tensor)


def test_training_key_changes_with_data_config_and_seed(corpus) -> None:
    base = training.training_key(tiny_adapter(), corpus.train, 6, seed=0)
    assert training.training_key(tiny_adapter(), corpus.train, 6, seed=0) == base
    assert training.training_key(tiny_adapter(), corpus.train, 6, seed=1) != base
    assert training.training_key(tiny_adapter(steps=41), corpus.train, 6, seed=0) != base
    assert training.training_key(tiny_adapter(), corpus.train, 7, seed=0) != base
    changed = small_corpus(num_clips=12, num_frames=5, size=16)
    changed.train.frames[0, 0, 0, 0, 0] += 0.5
    assert training.training_key(tiny_adapter(), changed.train, 6, seed=0) != base


def test_checkpoints_are_safetensors_with_a_json_sidecar(trained) -> None:
    model = trained[0]
    assert model.steps == [20, 40]
    files = sorted(p.name for p in model.folder.iterdir())
    assert files == ["model.json", "step-000020.safetensors", "step-000040.safetensors"]
    state = load_file(str(model.checkpoints[20]))
    module = model.adapter.build_fresh(model.clip_shape, 6)
    assert set(state) == set(module.state_dict())
    info = json.loads((model.folder / "model.json").read_text())
    assert info["checkpoint_steps"] == [20, 40] and info["adapter"]["training"]["steps"] == 40
    later = load_file(str(model.checkpoints[40]))
    assert not torch.equal(state["patch_in.weight"], later["patch_in.weight"])


def test_an_incomplete_entry_is_retrained_and_matches(corpus, trained, tmp_path: Path) -> None:
    # An interrupted run leaves checkpoints but no model.json: never loaded, trained again. The retrained
    # weights equal the first run's (training is deterministic).
    first = trained[0]
    ctx = make_context(tmp_path)
    folder = Path(ctx.cache_dir) / "models" / first.folder.name
    folder.mkdir(parents=True)
    (folder / "step-000040.safetensors").write_bytes(b"half a file")
    again = train(tiny_adapter(), corpus.train, ctx)
    assert not again.loaded_from_cache and again.folder == folder
    assert not list(folder.glob(".*.tmp"))
    expected = load_file(str(first.checkpoints[40]))
    for name, tensor in load_file(str(again.checkpoints[40])).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_samples_are_frames_in_range(trained) -> None:
    model, ctx = trained
    samples = sample_per_class(model, 2, ctx)
    assert samples.frames.shape == (12, 5, 16, 16, 1)
    assert samples.frames.min() >= 0 and samples.frames.max() <= 1
    np.testing.assert_array_equal(samples.labels, np.repeat(np.arange(6), 2))


def test_checkpoint_outside_the_training_run_is_refused() -> None:
    with pytest.raises(ConfigValueError, match="training.checkpoints"):
        tiny_adapter(steps=10, checkpoints=(20,))


# -- classifier-free guidance: label dropout in training, guided sampling ---------------------------


@pytest.fixture(scope="module")
def guided(corpus, tmp_path_factory):
    """A tiny conditional model trained with label dropout 0.3 (so it has a null label)."""
    ctx = make_context(tmp_path_factory.mktemp("guided"))
    adapter = tiny_adapter(steps=30, checkpoints=(), label_dropout=0.3)
    return train(adapter, corpus.train, ctx), ctx


def sample_with_guidance(model: TrainedModel, guidance: float, labels: torch.Tensor) -> np.ndarray:
    """Samples of ``model`` (seed 3) with its null label, at another guidance scale."""
    adapter = type(model.adapter)(dataclasses.replace(model.adapter.config, guidance=guidance))
    return adapter.sample(model.module(), labels, len(labels), model.clip_shape, seed=3, null_label=6)


def test_label_dropout_adds_a_null_label_row(corpus, guided) -> None:
    model, ctx = guided
    assert model.null_label == 6
    assert model.module().class_embedding.weight.shape[0] == 7
    plain = train(tiny_adapter(steps=2, checkpoints=()), corpus.train, ctx)
    assert plain.null_label is None and plain.module().class_embedding.weight.shape[0] == 6


def test_null_row_is_trained(guided) -> None:
    # Label dropout must reach the null row: an untrained row would still hold its initial values.
    model, ctx = guided
    untouched = tiny_adapter(steps=30, checkpoints=(), label_dropout=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed_for("model-init"))
        initial = untouched.build_fresh(model.clip_shape, 7)
    trained_row = model.module().class_embedding.weight[6]
    assert not torch.allclose(trained_row, initial.class_embedding.weight[6])


def test_guidance_one_is_plain_conditional_sampling(guided) -> None:
    model, _ = guided
    plain = model.adapter.sample(model.module(), torch.arange(6), 6, model.clip_shape, seed=3)
    np.testing.assert_array_equal(plain, sample_with_guidance(model, 1.0, torch.arange(6)))


def test_guidance_zero_samples_the_null_label(guided) -> None:
    # eps = eps(null) + 0 * (eps(class) - eps(null)): the class no longer matters.
    model, _ = guided
    null_samples = model.adapter.sample(model.module(), torch.full((6,), 6), 6, model.clip_shape, seed=3)
    np.testing.assert_allclose(sample_with_guidance(model, 0.0, torch.arange(6)), null_samples, atol=1e-5)


def test_guidance_changes_the_samples(guided) -> None:
    model, _ = guided
    plain = model.adapter.sample(model.module(), torch.arange(6), 6, model.clip_shape, seed=3)
    assert np.abs(plain - sample_with_guidance(model, 4.0, torch.arange(6))).max() > 1e-3


def test_guidance_without_a_null_label_is_refused() -> None:
    with pytest.raises(ConfigValueError, match="guidance.*label_dropout"):
        tiny_adapter(guidance=3.0)
    model_config = tiny_adapter().config
    adapter = type(tiny_adapter())(model_config)
    adapter.config.guidance = 2.0  # bypass validation: sample() must still refuse without a null label
    with pytest.raises(ConfigValueError, match="guidance"):
        adapter.sample(adapter.build_fresh((5, 16, 16, 1), 6), torch.arange(2), 2, (5, 16, 16, 1), seed=0)


def test_label_dropout_needs_a_conditional_model() -> None:
    with pytest.raises(ConfigValueError, match="training.label_dropout"):
        tiny_adapter(conditional=False, label_dropout=0.2)
    with pytest.raises(ConfigValueError, match="training.label_dropout"):
        tiny_adapter(label_dropout=1.0)


def test_sampling_fields_do_not_retrain(corpus) -> None:
    base = tiny_adapter(label_dropout=0.3)
    key = training.training_key(base, corpus.train, 6, seed=0)
    other = type(base)(dataclasses.replace(base.config, guidance=5.0, sample_steps=2))
    assert training.training_key(other, corpus.train, 6, seed=0) == key
    assert training.training_key(tiny_adapter(label_dropout=0.2), corpus.train, 6, seed=0) != key


# -- image-to-video: context frames -----------------------------------------------------------------


def test_context_frames_stay_clean_and_out_of_the_loss() -> None:
    adapter = tiny_adapter(context_frames=2)
    x0, noise = torch.rand(3, 1, 5, 16, 16) * 2 - 1, torch.randn(3, 1, 5, 16, 16)
    x_t = adapter.add_noise(x0, torch.tensor([90, 50, 10]), noise)
    torch.testing.assert_close(x_t[:, :, :2], x0[:, :, :2], rtol=0, atol=0)
    assert (x_t[:, :, 2:] - x0[:, :, 2:]).abs().mean() > 0.1
    prediction = torch.randn(3, 1, 5, 16, 16)
    changed = prediction.clone()
    changed[:, :, :2] += 5.0  # the context frames' prediction must not count
    torch.testing.assert_close(
        adapter.per_example_loss(prediction, noise), adapter.per_example_loss(changed, noise)
    )
    torch.testing.assert_close(adapter.dtrak_output(prediction), adapter.dtrak_output(changed))
    assert not torch.equal(
        adapter.per_example_loss(prediction, noise), tiny_adapter().per_example_loss(prediction, noise)
    )


def test_image_to_video_samples_continue_the_context(corpus, tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    model = train(tiny_adapter(steps=4, checkpoints=(), context_frames=1), corpus.train, ctx)
    samples = sample_per_class(model, 2, ctx, context=corpus.queries)
    # sample j of every class starts from query j's first frame
    starts = corpus.queries.frames[[0, 1] * 6, :1]
    np.testing.assert_allclose(samples.frames[:, :1], starts, atol=1e-6)
    assert np.abs(samples.frames[:, 1:] - starts).max() > 1e-3
    with pytest.raises(ValueError, match="context_frames=1"):
        sample_per_class(model, 2, ctx)


def test_negative_context_frames_are_refused() -> None:
    with pytest.raises(ConfigValueError, match="context_frames"):
        tiny_adapter(context_frames=-1)


def test_v_objective_is_the_v_prediction_mse() -> None:
    # eps = sqrt(ab) v + sqrt(1 - ab) x_t, so the v MSE is the eps MSE / ab: check against v computed directly.
    adapter = tiny_adapter(objective="v")
    x0, noise = torch.rand(4, 1, 5, 16, 16) * 2 - 1, torch.randn(4, 1, 5, 16, 16)
    t = torch.tensor([5, 40, 70, 90])  # alpha_bar above the 1e-4 floor
    eps_prediction = torch.randn(4, 1, 5, 16, 16)
    ab = adapter.schedule.alpha_bars[t].float().reshape(-1, 1, 1, 1, 1)
    assert float(ab.min()) > 1e-4
    x_t = adapter.add_noise(x0, t, noise)
    v_true = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    v_prediction = (eps_prediction - (1 - ab).sqrt() * x_t) / ab.sqrt()
    expected = ((v_prediction - v_true) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(
        adapter.training_loss(eps_prediction, noise, t), expected, rtol=1e-4, atol=1e-6
    )
    eps_loss = tiny_adapter().training_loss(eps_prediction, noise, t)
    torch.testing.assert_close(eps_loss, adapter.per_example_loss(eps_prediction, noise))
    with pytest.raises(ConfigValueError, match="training.objective"):
        tiny_adapter(objective="x0")
