"""RAFT: architecture, checkpoint layouts, correlation lookup order, padding, the estimator, train-raft.

Random-initialised networks only (no weights can be downloaded here); images are the smallest RAFT
accepts (128 px) and iterations few, so the file runs in well under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mwga_plugins.motion.raft import RaftConfig, RaftFlow  # noqa: E402
from mwga_plugins.motion.raft_net.checkpoints import (  # noqa: E402
    CheckpointError,
    from_torchvision,
    load_raft,
    to_torchvision,
)
from mwga_plugins.motion.raft_net.corr import CorrPyramid, coords_grid, lookup_offsets  # noqa: E402
from mwga_plugins.motion.raft_net.raft import RAFT, InputPadder  # noqa: E402

from mwga_core.api.context import RunContext  # noqa: E402
from mwga_core.api.errors import ConfigValueError, DataError  # noqa: E402


def _model(variant: str, seed: int = 0) -> RAFT:
    torch.manual_seed(seed)
    model = RAFT(small=variant == "small")
    if variant == "large":
        # Non-trivial batch-norm statistics, so a norm3/downsample.1 mix-up would change the output.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _images(seed: int = 1, size: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(1, 3, *size, generator=generator) * 255
    second = torch.roll(first, shifts=(1, 2), dims=(2, 3))
    return first, second


@pytest.fixture(scope="module")
def small_model() -> RAFT:
    return _model("small")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, small_model) -> Path:
    path = tmp_path_factory.mktemp("raft") / "raft-small-random.pth"
    torch.save({f"module.{k}": v for k, v in small_model.state_dict().items()}, path)
    return path


# --- architecture -------------------------------------------------------------------------------------


def test_parameter_counts_and_key_counts_match_the_published_models():
    large, small = RAFT(small=False), RAFT(small=True)
    # torchvision's model cards: raft_large 5,257,536 and raft_small 990,162 parameters.
    assert sum(p.numel() for p in large.parameters()) == 5_257_536
    assert sum(p.numel() for p in small.parameters()) == 990_162
    # The official raft-things.pth holds 179 tensors (norm3 listed beside downsample.1).
    assert len(large.state_dict()) == 179
    assert "cnet.layer2.0.norm3.running_var" in large.state_dict()
    assert "cnet.layer2.0.downsample.1.running_var" in large.state_dict()


def test_torchvision_names_are_torchvisions():
    keys = set(to_torchvision(_model("large").state_dict()))
    for expected in (
        "feature_encoder.convnormrelu.0.weight",
        "context_encoder.convnormrelu.1.running_mean",
        "context_encoder.layer2.0.convnormrelu1.1.weight",
        "context_encoder.layer2.0.downsample.1.running_var",
        "feature_encoder.conv.weight",
        "update_block.motion_encoder.convcorr2.0.weight",
        "update_block.motion_encoder.convflow1.0.bias",
        "update_block.motion_encoder.conv.0.weight",
        "update_block.recurrent_block.convgru2.convq.weight",
        "update_block.flow_head.conv2.bias",
        "mask_predictor.convrelu.0.weight",
        "mask_predictor.conv.bias",
    ):
        assert expected in keys, expected
    assert not any("norm3" in key for key in keys)
    assert len(keys) == 169
    small_keys = set(to_torchvision(_model("small").state_dict()))
    assert "update_block.recurrent_block.convgru1.convz.weight" in small_keys
    assert not any(key.startswith("mask_predictor") or "convgru2" in key for key in small_keys)


@pytest.mark.parametrize("variant", ["small", "large"])
def test_both_key_layouts_load_to_identical_flow(tmp_path, variant):
    model = _model(variant)
    official = tmp_path / "official.pth"
    torchvision_layout = tmp_path / "torchvision.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, official)
    torch.save(to_torchvision(model.state_dict()), torchvision_layout)
    first, second = _images()
    with torch.inference_mode():
        reference = model(first, second, iterations=2)[-1]
        assert reference.shape == (1, 2, 128, 128)
        for path in (official, torchvision_layout):
            loaded = load_raft(path)
            assert loaded.variant == variant
            assert torch.equal(loaded(first, second, iterations=2)[-1], reference)


def test_torchvision_round_trip_is_lossless():
    state = _model("large").state_dict()
    back = from_torchvision(to_torchvision(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


# --- wrong checkpoints --------------------------------------------------------------------------------


def test_a_different_model_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "not-raft.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not-raft.pth") as error:
        load_raft(path)
    assert "weight" in str(error.value)


def test_wrong_shapes_are_listed(tmp_path, small_model):
    state = dict(small_model.state_dict())
    state["update_block.flow_head.conv2.weight"] = torch.zeros(3, 128, 3, 3)
    del state["update_block.gru.convq.bias"]
    path = tmp_path / "broken-small.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_raft(path)
    message = str(error.value)
    assert "broken-small.pth" in message
    assert "update_block.flow_head.conv2.weight (3, 128, 3, 3)" in message
    assert "missing keys: update_block.gru.convq.bias" in message


def test_variant_mismatch_and_non_checkpoints_are_refused(tmp_path, small_checkpoint):
    with pytest.raises(CheckpointError, match="RAFT-small weights, but variant=large"):
        load_raft(small_checkpoint, variant="large")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth: cannot be read"):
        load_raft(text)
    assert issubclass(CheckpointError, DataError)


def test_an_empty_checkpoint_is_named_and_called_empty(tmp_path):
    empty = tmp_path / "raft-things.pth"
    empty.touch()
    with pytest.raises(CheckpointError) as error:
        load_raft(empty)
    assert str(error.value).startswith(f"{empty} is empty (0 bytes)")
    assert "truncated" in str(error.value)


def test_a_truncated_checkpoint_is_named_and_the_reason_is_never_blank(tmp_path, small_checkpoint):
    data = small_checkpoint.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_raft(cut)
    message = str(error.value)
    assert message.startswith(f"{cut}: cannot be read as a PyTorch checkpoint") and "truncated" in message
    assert "()" not in message


# --- correlation lookup, padding, upsampling --------------------------------------------------------


def test_correlation_lookup_uses_the_official_offset_order():
    radius, dx, dy = 3, 2, -1
    generator = torch.Generator().manual_seed(0)
    fmap1 = torch.randn(1, 64, 16, 16, generator=generator)
    # Pixel (x, y) of image 1 is found at (x + dx, y + dy) in image 2.
    fmap2 = torch.roll(fmap1, shifts=(dy, dx), dims=(2, 3))
    corr = CorrPyramid(fmap1, fmap2, levels=1, radius=radius)(coords_grid(1, 16, 16))
    assert corr.shape == (1, (2 * radius + 1) ** 2, 16, 16)
    best = corr[0, :, radius:-radius, radius:-radius].argmax(dim=0)
    side = 2 * radius + 1
    # The x offset varies slowest: channel (dx + r) * (2r + 1) + (dy + r). The other order would give 19.
    expected = (dx + radius) * side + (dy + radius)
    assert expected == 37
    assert torch.all(best == expected)
    assert lookup_offsets(radius)[dx + radius, dy + radius].tolist() == [dx, dy]


def test_input_padder_pads_by_replication_centred_and_unpads_exactly():
    image = torch.rand(2, 3, 130, 141)
    padder = InputPadder(image.shape)
    (padded,) = padder.pad(image)
    assert padded.shape == (2, 3, 136, 144)
    assert padder.padding == [1, 2, 3, 3]  # left, right, top, bottom: odd remainders go right/bottom
    assert torch.equal(padded[..., 0, 1:-2], image[..., 0, :])  # top rows replicate the first row
    assert torch.equal(padded[..., 3:-3, 0], image[..., :, 0])
    assert torch.equal(padder.unpad(padded), image)


def test_convex_and_bilinear_upsampling_keep_a_constant_flow():
    from mwga_plugins.motion.raft_net.raft import convex_upsample, upflow8

    flow = torch.full((1, 2, 4, 5), 1.5)
    assert torch.allclose(upflow8(flow), torch.full((1, 2, 32, 40), 12.0))
    mask = torch.randn(1, 9 * 64, 4, 5)
    up = convex_upsample(flow, mask)
    assert up.shape == (1, 2, 32, 40)
    # Away from the zero-padded border every convex combination of equal values is that value.
    assert torch.allclose(up[..., 8:-8, 8:-8], torch.full_like(up[..., 8:-8, 8:-8], 12.0), atol=1e-5)


# --- the estimator --------------------------------------------------------------------------------------


def test_estimator_upsamples_small_clips_and_returns_finite_flow(small_checkpoint):
    estimator = RaftFlow(RaftConfig(checkpoint=str(small_checkpoint), iterations=2, batch_size=4))
    assert estimator.upsampling_factor(32, 32) == 4
    frames = np.random.default_rng(0).random((2, 4, 32, 32, 1), dtype=np.float32)
    flows = estimator.estimate(frames, RunContext())
    assert flows.shape == (2, 3, 32, 32, 2)
    assert flows.dtype == np.float32
    assert np.isfinite(flows).all()
    # Batching does not change the answer.
    single = RaftFlow(RaftConfig(checkpoint=str(small_checkpoint), iterations=2, batch_size=1))
    np.testing.assert_allclose(single.estimate(frames[:1, :2], RunContext())[0, 0], flows[0, 0], atol=1e-4)


def test_estimator_pads_sizes_that_are_not_multiples_of_8(small_checkpoint):
    estimator = RaftFlow(RaftConfig(checkpoint=str(small_checkpoint), iterations=1))
    frames = np.random.default_rng(1).random((1, 2, 33, 35, 3), dtype=np.float32)  # x4 -> 132x140 -> pad
    flows = estimator.estimate(frames, RunContext())
    assert flows.shape == (1, 1, 33, 35, 2)
    assert np.isfinite(flows).all()


def test_estimator_divides_the_flow_by_the_upsampling_factor(small_checkpoint):
    class ConstantFlow(torch.nn.Module):
        """Stands in for RAFT: 8 px of rightward motion everywhere, at the size it is given."""

        def forward(self, image1, image2, iterations):
            flow = torch.zeros(image1.shape[0], 2, *image1.shape[-2:])
            flow[:, 0] = 8.0
            return [flow]

    estimator = RaftFlow(RaftConfig(checkpoint=str(small_checkpoint)))
    estimator._model = ConstantFlow()
    flow = estimator.flow_batch(np.zeros((1, 32, 32, 1), np.float32), np.zeros((1, 32, 32, 1), np.float32))
    np.testing.assert_allclose(flow[..., 0], 2.0)  # x4 upsampling: 8 px there are 2 px here
    np.testing.assert_allclose(flow[..., 1], 0.0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"checkpoint": ""}, "checkpoint"),
        ({"checkpoint": "/nonexistent/raft.pth"}, "checkpoint"),
        ({"variant": "medium"}, "variant"),
        ({"iterations": 0}, "iterations"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_size": 64}, "min_size"),
    ],
)
def test_bad_config_values_are_refused(small_checkpoint, overrides, field):
    config = RaftConfig(**{"checkpoint": str(small_checkpoint), **overrides})
    with pytest.raises(ConfigValueError) as error:
        RaftFlow(config)
    assert error.value.field == field


# --- training --------------------------------------------------------------------------------------------


def test_sequence_loss_weights_later_iterations_more():
    from mwga_plugins.motion.raft_net.train import sequence_loss

    target = torch.zeros(1, 2, 4, 4)
    predictions = [torch.ones(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), torch.full((1, 2, 8, 8), 2.0)]
    # weights 0.8^2, 0.8^1, 0.8^0 on mean |error| 1, 0, 2 (after 2x2 average pooling)
    assert float(sequence_loss(predictions, target, factor=2)) == pytest.approx(0.64 + 2.0)


def test_a_few_training_steps_on_one_batch_reduce_the_loss(small_model):
    from mwga_plugins.motion.raft_net.train import sequence_loss

    torch.manual_seed(0)
    model = RAFT(small=True).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=4e-4)
    first, _ = _images(size=(128, 128))
    second = torch.roll(first, shifts=(0, 4), dims=(2, 3))  # 4 px to the right at 128 px = 1 px at 32
    target = torch.zeros(1, 2, 32, 32)
    target[:, 0] = 4.0
    losses = []
    for _ in range(6):
        loss = sequence_loss(model(first, second, iterations=2), target, factor=4)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_train_raft_writes_an_official_checkpoint_the_estimator_loads(tmp_path):
    from mwga_plugins.motion.raft_net.train import main

    out = tmp_path / "trained.pth"
    args = ["--out", str(out), "--steps", "1", "--batch-size", "1", "--iterations", "1", "--clips", "6"]
    assert main([*args, "--eval-clips", "0", "--no-bf16", "--json", str(tmp_path / "s.json")]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert all(key.startswith("module.") for key in state)
    assert load_raft(out).variant == "small"
    assert '"steps": 1' in (tmp_path / "s.json").read_text()
    with pytest.raises(ConfigValueError, match="--eval-seed"):
        main([*args, "--seed", "3", "--eval-seed", "3"])


# --- command line -------------------------------------------------------------------------------------


def _mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MWGA_STRICT_PLUGINS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow  # ~10 s on a quiet machine, 36 s measured with the cores shared
def test_mwga_runs_end_to_end_with_motion_raft(tmp_path, small_checkpoint):
    result = _mwga(
        "method=ours_simulated",
        "motion=raft",
        f"motion.checkpoint={small_checkpoint}",
        "motion.iterations=1",
        "dataset.num_clips=24",
        "dataset.num_frames=3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "outputs:" in result.stdout


def test_mwga_motion_raft_without_checkpoint_explains_itself(tmp_path):
    result = _mwga(
        "method=ours_simulated", "motion=raft", "dataset.num_clips=12", "dataset.num_frames=3", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "motion.checkpoint" in result.stderr


def test_mwga_with_an_empty_checkpoint_names_the_file(tmp_path):
    empty = tmp_path / "raft-small.pth"
    empty.touch()
    result = _mwga(
        "method=ours_simulated",
        "motion=raft",
        f"motion.checkpoint={empty}",
        "dataset.num_clips=12",
        "dataset.num_frames=3",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    message = " ".join(result.stderr.split())  # the console wraps long lines (a long path mid-word)
    assert "raft-small.pth is empty (0 bytes)" in message
    assert "Traceback" not in result.stderr
