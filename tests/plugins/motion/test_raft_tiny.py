"""RAFT-tiny (mwga's stride-2 variant for 32x32 clips): shapes, checkpoint recognition, the estimator
without upsampling, and ``mwga train-raft --variant tiny`` writing a checkpoint the estimator loads.

Random or few-step weights only; everything runs on 32x32 frames, so the file takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mwga_plugins.datasets.synthetic import PATTERNS  # noqa: E402
from mwga_plugins.motion.raft import RaftConfig, RaftFlow  # noqa: E402
from mwga_plugins.motion.raft_net.checkpoints import (  # noqa: E402
    CheckpointError,
    detect_variant,
    from_torchvision,
    load_raft,
    to_torchvision,
)
from mwga_plugins.motion.raft_net.raft import RAFT, SPECS  # noqa: E402

from mwga_core.api.context import RunContext  # noqa: E402
from mwga_core.api.errors import ConfigValueError  # noqa: E402


def _pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    first = torch.rand(2, 3, size, size, generator=generator) * 255
    return first, torch.roll(first, shifts=(0, 1), dims=(2, 3))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = RAFT(variant="tiny")
    path = tmp_path_factory.mktemp("raft-tiny") / "raft-tiny-random.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def test_tiny_works_at_stride_2_on_32_pixel_frames():
    model = RAFT(variant="tiny").eval()
    assert model.spec.stride == 2
    assert SPECS["tiny"].min_side == 16
    assert SPECS["small"].min_side == SPECS["large"].min_side == 128
    assert sum(p.numel() for p in model.parameters()) == 807_076
    first, second = _pair()
    with torch.inference_mode():
        assert model.fnet(first).shape == (2, 64, 16, 16)
        flows = model(first, second, iterations=3)
    assert len(flows) == 3
    assert flows[-1].shape == (2, 2, 32, 32)
    assert torch.isfinite(flows[-1]).all()
    with pytest.raises(ValueError, match="medium"):
        RAFT(variant="medium")


def test_tiny_is_recognised_from_its_shapes_in_both_layouts(tmp_path, tiny_checkpoint):
    state = load_raft(tiny_checkpoint).state_dict()
    assert detect_variant(state) == "tiny"
    assert detect_variant(RAFT(small=True).state_dict()) == "small"
    assert detect_variant(RAFT(small=False).state_dict()) == "large"
    # torchvision names (one GRU, a mask head) come back to the same tensors.
    back = from_torchvision(to_torchvision(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    renamed = tmp_path / "tiny-torchvision.pth"
    torch.save(to_torchvision(state), renamed)
    first, second = _pair()
    with torch.inference_mode():
        expected = load_raft(tiny_checkpoint)(first, second, iterations=2)[-1]
        assert torch.equal(load_raft(renamed)(first, second, iterations=2)[-1], expected)


def test_a_wrong_kind_of_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="RAFT-tiny weights, but variant=small"):
        load_raft(tiny_checkpoint, variant="small")
    small = tmp_path / "small.pth"
    torch.save(RAFT(small=True).state_dict(), small)
    with pytest.raises(CheckpointError, match="RAFT-small weights, but variant=tiny"):
        load_raft(small, variant="tiny")
    state = load_raft(tiny_checkpoint).state_dict()
    state["update_block.gru.convz.weight"] = torch.zeros(96, 176, 3, 3)
    broken = tmp_path / "broken-tiny.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match=r"broken-tiny.pth is not a RAFT-tiny checkpoint.*convz"):
        load_raft(broken)


def test_the_estimator_runs_tiny_at_the_clips_own_resolution(tiny_checkpoint):
    estimator = RaftFlow(RaftConfig(checkpoint=str(tiny_checkpoint), iterations=2))
    assert estimator.model().variant == "tiny"
    assert estimator.upsampling_factor(32, 32) == 1
    assert estimator.upsampling_factor(8, 8) == 2  # below tiny's 16 px minimum
    frames = np.random.default_rng(0).random((1, 3, 32, 32, 1), dtype=np.float32)
    flows = estimator.estimate(frames, RunContext())
    assert flows.shape == (1, 2, 32, 32, 2)
    assert np.isfinite(flows).all()
    with pytest.raises(ConfigValueError, match="RAFT-tiny") as error:
        RaftFlow(RaftConfig(checkpoint=str(tiny_checkpoint), min_size=8))
    assert error.value.field == "min_size"
    with pytest.raises(CheckpointError, match="variant=large"):
        RaftFlow(RaftConfig(checkpoint=str(tiny_checkpoint), variant="large"))


def test_train_raft_tiny_writes_a_checkpoint_the_estimator_loads_and_evaluates(tmp_path):
    from mwga_plugins.motion.raft_net.train import learning_rate, main

    out = tmp_path / "tiny.pth"
    summary = tmp_path / "summary.json"
    args = ["--variant", "tiny", "--out", str(out), "--steps", "3", "--batch-size", "2", "--clips", "6"]
    eval_args = ["--eval-clips", "6", "--eval-pairs", "1", "--eval-iterations", "2", "--no-bf16"]
    assert main([*args, "--iterations", "2", *eval_args, "--json", str(summary)]) == 0
    assert load_raft(out).variant == "tiny"
    result = json.loads(summary.read_text())
    assert result["variant"] == "tiny"
    assert result["upsampling"] == 1
    assert result["steps"] == 3
    # 3 steps x 2 pairs out of a 6-clip pool (90 pairs): one pool.
    assert result["clip_pools"] == 1
    evaluation = result["evaluation"]
    assert evaluation["pairs"] == 6
    assert evaluation["border"] == 4
    for name in ("raft", "farneback"):
        assert set(evaluation[name]["per_pattern"]) == set(PATTERNS)
        assert np.isfinite(evaluation[name]["epe"])
    estimator = RaftFlow(RaftConfig(checkpoint=str(out), iterations=2))
    assert estimator.estimate(np.zeros((1, 2, 32, 32, 1), np.float32), RunContext()).shape == (
        1,
        1,
        32,
        32,
        2,
    )
    # The schedule: linear warm-up to the peak, then linear decay to 0.
    assert learning_rate(1.0, 0.025) == pytest.approx(0.5)
    assert learning_rate(1.0, 0.05) == pytest.approx(1.0)
    assert learning_rate(1.0, 1.0) == 0.0
    with pytest.raises(ConfigValueError, match="--min-size"):
        main([*args, "--min-size", "8", "--eval-clips", "0"])
