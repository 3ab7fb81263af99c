"""Flow evaluation: the metrics, the per-pattern scores and the ``mwga flow-eval`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mwga_core.api.errors import MwgaUserError
from mwga_core.api.motion import MotionConfig, MotionEstimator
from mwga_core.cli.main import main
from mwga_core.evaluation.flow_eval import (
    evaluate_estimator,
    flow_metrics,
    interior_mask,
    parse_estimator_spec,
    parse_set_overrides,
)
from mwga_core.testing import small_corpus


class ZeroFlow(MotionEstimator):
    """Claims nothing moves."""

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        return np.zeros((*previous.shape, 2), dtype=np.float32)


def test_ground_truth_against_itself_is_perfect() -> None:
    gt = small_corpus().train.gt_flow
    assert flow_metrics(gt, gt) == {"epe": 0.0, "acc_1px": 1.0, "acc_3px": 1.0, "acc_5px": 1.0}


def test_zero_flow_against_a_pan_costs_the_speed() -> None:
    pan = np.zeros((2, 3, 10, 10, 2), dtype=np.float32)
    pan[..., 0] = 2.5
    metrics = flow_metrics(np.zeros_like(pan), pan, border=2)
    assert metrics["epe"] == pytest.approx(2.5)
    assert metrics["acc_1px"] == 0.0 and metrics["acc_3px"] == 1.0 and metrics["acc_5px"] == 1.0


def test_border_leaves_out_the_edge_pixels() -> None:
    gt = np.zeros((1, 1, 8, 8, 2))
    flow = gt.copy()
    flow[..., 0, :, 0] = 4.0  # only the top row is wrong
    assert flow_metrics(flow, gt, border=0)["epe"] == pytest.approx(0.5)
    assert flow_metrics(flow, gt, border=1)["epe"] == 0.0
    assert interior_mask(8, 8, 3).sum() == 4
    with pytest.raises(MwgaUserError, match="border"):
        interior_mask(8, 8, 4)


def test_per_pattern_scores_of_zero_flow_equal_each_patterns_speed(ctx) -> None:
    corpus = small_corpus()
    clips = corpus.train
    scores, flows = evaluate_estimator(
        "zero", ZeroFlow(MotionConfig(name="zero")), clips, corpus.class_names, ctx, 0
    )
    assert [s.pattern for s in scores] == [*corpus.class_names, "all"]
    assert flows.shape == clips.gt_flow.shape
    speed = np.hypot(clips.gt_flow[..., 0], clips.gt_flow[..., 1])
    for score in scores:
        selected = (
            np.ones(len(clips), bool)
            if score.pattern == "all"
            else clips.labels == corpus.class_names.index(score.pattern)
        )
        assert score.epe == pytest.approx(speed[selected].mean())
        assert score.clips == selected.sum()


def test_spec_and_override_parsing() -> None:
    assert parse_estimator_spec("dis:preset=fast:finest_scale=0") == (
        "dis",
        {"preset": "fast", "finest_scale": 0},
    )
    assert parse_estimator_spec("farneback") == ("farneback", {})
    with pytest.raises(MwgaUserError, match="FIELD=VALUE"):
        parse_estimator_spec("dis:fast")
    assert parse_set_overrides(["motion.checkpoint=a/b.pth", "dataset.size=16"]) == {
        "motion": {"checkpoint": "a/b.pth"},
        "dataset": {"size": 16},
    }
    with pytest.raises(MwgaUserError, match="TARGET.FIELD=VALUE"):
        parse_set_overrides(["checkpoint=x"])


def test_flow_eval_command_writes_tables_and_pictures(host, tmp_path: Path, capsys) -> None:
    out, pictures = tmp_path / "eval", tmp_path / "png"
    args = ["flow-eval", "--estimators", "farneback,dis:preset=ultrafast", "--clips", "6", "--out", str(out)]
    args += ["--set", "dataset.size=16", "--set", "dataset.num_frames=3", "--border", "2"]
    assert main([*args, "--save-flow-png", str(pictures)]) == 0
    document = json.loads((out / "flow_eval.json").read_text())
    rows = document["scores"]
    assert len(rows) == 2 * 7  # (6 patterns + all) per estimator
    assert {r["estimator"] for r in rows} == {"farneback", "dis:preset=ultrafast"}
    assert all(0 <= r["epe"] < 1.0 and r["acc_3px"] == 1.0 for r in rows)
    assert document["settings"]["border"] == 2 and document["settings"]["frame_size"] == [16, 16]
    assert (out / "flow_eval.csv").read_text().count("\n") == 15
    assert "| farneback | horizontal pan |" in (out / "flow_eval.md").read_text()
    assert "EPE (px)" in capsys.readouterr().out

    import cv2

    image = cv2.imread(str(pictures / "zoom_in.png"))
    assert image.shape == (16 * 4, (4 * 16 + 3) * 4, 3)  # frame, truth, 2 estimators, 1-px gaps; x4
    assert (pictures / "zoom_in_ground_truth.flo").is_file()
    assert (pictures / "zoom_in_dis_preset_ultrafast.flo").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--estimators", "nonesuch"], "unknown motion"),
        (["--set", "motion.no_such_field=1"], "no chosen estimator has a field"),
        (["--set", "farneback.winsize=1"], "motion.winsize=1"),
        (["--estimators", "dis:colour=red"], "has no field"),
        (["--set", "elsewhere.x=1"], "unknown target"),
        (["--border", "8"], "--border 8"),
        (["--estimators", "none"], "computes no flow"),
    ],
)
def test_flow_eval_command_reports_user_errors(
    host, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    args = [
        "flow-eval",
        "--clips",
        "6",
        "--out",
        str(tmp_path),
        "--set",
        "dataset.size=16",
        "--set",
        "dataset.num_frames=2",
    ]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
