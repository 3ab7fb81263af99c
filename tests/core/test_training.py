"""The trainer: it learns, it caches, it writes safetensors atomically, it is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig
from safetensors.torch import load_file

from mwga_core import training
from mwga_core.errors import ConfigValueError
from mwga_core.models import TrainingConfig
from mwga_core.testing.contracts import make_context, small_corpus


def tiny_adapter(steps: int = 40, checkpoints: tuple[int, ...] = (20,), **fields) -> VideoDenoiserAdapter:
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
                steps=steps, batch_size=8, lr=1e-2, warmup=5, checkpoints=list(checkpoints), bf16=False
            ),
            **fields,
        )
    )


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(num_clips=12, num_frames=5, size=16)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One tiny model trained once for the whole module (40 steps, checkpoints at 20 and 40)."""
    ctx = make_context(tmp_path_factory.mktemp("trained"))
    return training.load_or_train(tiny_adapter(), corpus.train, 6, ctx), ctx


def test_training_reduces_the_loss(trained) -> None:
    log = trained[0].info["training"]
    assert log["final_loss"] < 0.8 * log["first_loss"]
    assert log["steps"] == 40 and log["seconds"] > 0 and log["cpu_seconds"] > 0


def test_second_call_loads_from_the_cache(corpus, trained, monkeypatch) -> None:
    first, ctx = trained

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again despite a complete cache entry")

    monkeypatch.setattr(training, "train_denoiser", must_not_train)
    second = training.load_or_train(tiny_adapter(), corpus.train, 6, ctx)
    assert second.loaded_from_cache and second.folder == first.folder
    for name, tensor in first.module().state_dict().items():
        torch.testing.assert_close(second.module().state_dict()[name], tensor)


def test_cache_key_changes_with_data_config_and_seed(corpus) -> None:
    base = training.cache_key(tiny_adapter(), corpus.train, 6, seed=0)
    assert training.cache_key(tiny_adapter(), corpus.train, 6, seed=0) == base
    assert training.cache_key(tiny_adapter(), corpus.train, 6, seed=1) != base
    assert training.cache_key(tiny_adapter(steps=41), corpus.train, 6, seed=0) != base
    changed = small_corpus(num_clips=12, num_frames=5, size=16)
    changed.train.frames[0, 0, 0, 0, 0] += 0.5
    assert training.cache_key(tiny_adapter(), changed.train, 6, seed=0) != base


def test_checkpoints_are_safetensors_with_a_json_sidecar(trained) -> None:
    model = trained[0]
    assert model.steps == [20, 40]
    files = sorted(p.name for p in model.folder.iterdir())
    assert files == ["model.json", "step-000020.safetensors", "step-000040.safetensors"]
    state = load_file(str(model.checkpoint_path(20)))
    module = model.adapter.build(model.clip_shape, 6)
    assert set(state) == set(module.state_dict())
    info = json.loads((model.folder / "model.json").read_text())
    assert info["checkpoint_steps"] == [20, 40] and info["adapter"]["training"]["steps"] == 40
    later = load_file(str(model.checkpoint_path(40)))
    assert not torch.equal(state["patch_in.weight"], later["patch_in.weight"])


def test_an_incomplete_entry_is_retrained_and_matches(corpus, trained, tmp_path: Path) -> None:
    # An interrupted run leaves checkpoints but no model.json: never loaded, trained again. The retrained
    # weights equal the first run's (training is deterministic).
    first = trained[0]
    ctx = make_context(tmp_path)
    folder = Path(ctx.cache_dir) / "models" / first.folder.name
    folder.mkdir(parents=True)
    (folder / "step-000040.safetensors").write_bytes(b"half a file")
    again = training.load_or_train(tiny_adapter(), corpus.train, 6, ctx)
    assert not again.loaded_from_cache and again.folder == folder
    assert not list(folder.glob(".*.tmp"))
    expected = load_file(str(first.checkpoint_path(40)))
    for name, tensor in load_file(str(again.checkpoint_path(40))).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_samples_are_frames_in_range(trained) -> None:
    from mwga_core.model_check import sample_per_class

    model, ctx = trained
    samples = sample_per_class(model, 2, ctx)
    assert samples.frames.shape == (12, 5, 16, 16, 1)
    assert samples.frames.min() >= 0 and samples.frames.max() <= 1
    np.testing.assert_array_equal(samples.labels, np.repeat(np.arange(6), 2))


def test_checkpoint_outside_the_training_run_is_refused() -> None:
    with pytest.raises(ConfigValueError, match="training.checkpoints"):
        tiny_adapter(steps=10, checkpoints=(20,))
