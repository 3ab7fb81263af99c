"""``model.checkpoint``: any adapter attributes a model trained elsewhere, read safely, named by content.

The file is safetensors or a torch state dict (read with ``weights_only=True``); a file that does not
fit the architecture, holds pickled code or is not weights at all is refused in one line naming it; the
``model`` stage then trains nothing, and ``mwga index`` / ``mwga attribute`` use the file end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig
from safetensors.torch import save_file

from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.api.models import TrainingConfig
from mwga_core.counterfactual.retrain import Retrainer
from mwga_core.pipeline.model_stage import load_or_train_model
from mwga_core.testing import make_context, small_corpus

SHAPE = (5, 16, 16, 1)
NUM_CLASSES = 6


def tiny_config(**fields) -> VideoDenoiserConfig:
    training_config = TrainingConfig(steps=4, batch_size=4, warmup=1, checkpoints=[], bf16=False)
    fields.setdefault("channels", 8)
    return VideoDenoiserConfig(
        name="video_denoiser", blocks=1, diffusion_steps=100, training=training_config, **fields
    )


def random_weights(seed: int = 0, **fields) -> dict[str, torch.Tensor]:
    """The state dict of a freshly built denoiser (random, as if trained elsewhere)."""
    torch.manual_seed(seed)
    module = VideoDenoiserAdapter(tiny_config(**fields)).build_fresh(SHAPE, NUM_CLASSES)
    return {name: value.detach().clone().contiguous() for name, value in module.state_dict().items()}


def adapter_for(path: Path) -> VideoDenoiserAdapter:
    return VideoDenoiserAdapter(tiny_config(checkpoint=str(path)))


def test_a_safetensors_checkpoint_is_attributed_without_training(tmp_path: Path, monkeypatch) -> None:
    weights = random_weights()
    save_file(weights, tmp_path / "mine.safetensors")

    def no_training(*args, **kwargs):
        raise AssertionError("a model given as a checkpoint is never trained")

    monkeypatch.setattr("mwga_core.pipeline.model_stage.train_denoiser", no_training)
    ctx = make_context(tmp_path)
    train = small_corpus().train
    trained = load_or_train_model(adapter_for(tmp_path / "mine.safetensors"), train, ctx, NUM_CLASSES)
    assert trained.key.startswith("checkpoint-") and ctx.stage_log[-1]["status"] == "pretrained"
    module = trained.module()
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_a_torch_state_dict_is_read_with_weights_only(tmp_path: Path, wrapper) -> None:
    weights = random_weights()
    torch.save(weights if wrapper is None else {wrapper: weights, "epoch": 3}, tmp_path / "mine.pt")
    pretrained = adapter_for(tmp_path / "mine.pt").pretrained(SHAPE, NUM_CLASSES)
    assert pretrained is not None and set(pretrained.checkpoints) == {0}
    assert all(torch.equal(pretrained.checkpoints[0][n], weights[n]) for n in weights)


def test_the_key_hashes_the_files_content_not_its_name(tmp_path: Path) -> None:
    save_file(random_weights(0), tmp_path / "a.safetensors")
    (tmp_path / "copy.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes())
    save_file(random_weights(1), tmp_path / "b.safetensors")

    def key(name: str) -> str:
        return adapter_for(tmp_path / name).pretrained(SHAPE, NUM_CLASSES).key

    assert key("a.safetensors") == key("copy.safetensors") != key("b.safetensors")


def test_weights_of_another_architecture_name_the_file_and_the_first_mismatches(tmp_path: Path) -> None:
    save_file(random_weights(channels=16), tmp_path / "wide.safetensors")
    with pytest.raises(DataError) as error:
        adapter_for(tmp_path / "wide.safetensors").pretrained(SHAPE, NUM_CLASSES)
    message = str(error.value)
    assert f"model.checkpoint={tmp_path / 'wide.safetensors'}" in message
    assert "other shape:" in message and "(module: (8," in message


class Payload:
    """Anything that is not a tensor: unpickling it could run code."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("pickled code", "weights_only=True"),
        ("not weights", "not a safetensors file or a torch state dict"),
        ("empty dict", "expected a non-empty state dict"),
        ("damaged safetensors", "damaged safetensors file"),
    ],
)
def test_files_that_are_not_weights_are_refused_naming_the_file(tmp_path: Path, content, expected) -> None:
    path = tmp_path / "bad.pt"
    if content == "pickled code":
        torch.save({"weight": Payload()}, path)
    elif content == "not weights":
        path.write_text("these are my notes")
    elif content == "empty dict":
        torch.save({}, path)
    else:
        save_file(random_weights(), path)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=expected) as error:
        adapter_for(path).pretrained(SHAPE, NUM_CLASSES)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("where", ["missing.safetensors", "."])
def test_a_checkpoint_that_is_not_a_file_is_named(tmp_path: Path, where: str) -> None:
    with pytest.raises(DataError, match="model.checkpoint=.*(no such file|not a file)"):
        adapter_for(tmp_path / where).pretrained(SHAPE, NUM_CLASSES)


def test_the_counterfactual_protocols_refuse_a_given_checkpoint(tmp_path: Path) -> None:
    save_file(random_weights(), tmp_path / "mine.safetensors")
    corpus = small_corpus().train
    with pytest.raises(ConfigValueError, match="model.checkpoint"):
        Retrainer(
            adapter_for(tmp_path / "mine.safetensors"), corpus, corpus, NUM_CLASSES, [30], make_context()
        )


TINY_RUN = [
    "method=ours",
    "model.channels=8",
    "model.blocks=1",
    "model.diffusion_steps=100",
    "model.training.checkpoints=[]",
    "gradient.timesteps=[30]",
    "dataset.num_frames=5",
    "dataset.size=[16]",
]


def mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    # the timeout only stops a hung process: never tight, a loaded machine is many times slower
    return subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )


def test_index_and_attribute_use_the_checkpoint_end_to_end(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    generator = np.random.default_rng(0)
    for i in range(8):
        np.save(clips / f"clip_{i}.npy", generator.random((5, 16, 16)).astype(np.float32))
    save_file(random_weights(conditional=False), tmp_path / "mine.safetensors")
    checkpoint = f"model.checkpoint={tmp_path / 'mine.safetensors'}"
    index = mwga("index", str(clips), "--out", "index", *TINY_RUN, checkpoint, cwd=tmp_path)
    assert index.returncode == 0, index.stderr[-3000:]
    assert "trained" not in index.stdout + index.stderr, "a given checkpoint is never trained"
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
    attribution = mwga(
        "attribute", "index", str(clips / "clip_3.npy"), "--top-k", "3", "--out", "out", cwd=tmp_path
    )
    assert attribution.returncode == 0, attribution.stderr[-3000:]
    manifest = (tmp_path / "index" / "manifest.json").read_text()
    assert '"checkpoint_id": "checkpoint-' in manifest  # features of the file's weights, not a trained model
    top = json.loads((tmp_path / "out" / "attribution.json").read_text())["queries"][0]["top"]
    assert "clip_3.npy" in [row["clip_id"] for row in top]  # the query itself is a training clip

    save_file(random_weights(channels=16, conditional=False), tmp_path / "wide.safetensors")
    wrong = mwga(
        "index", str(clips), "--out", "index2", *TINY_RUN, f"model.checkpoint={tmp_path / 'wide.safetensors'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert f"model.checkpoint={tmp_path / 'wide.safetensors'}" in wrong.stderr
