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
    estimator_overrides,
    evaluate_estimator,
    flow_metrics,
    interior_mask,
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


def test_an_estimator_spec_is_a_list_of_overrides() -> None:
    assert estimator_overrides("dis:preset=fast:finest_scale=0") == (
        "dis",
        ["motion=dis", "motion.preset=fast", "motion.finest_scale=0"],
    )
    assert estimator_overrides("farneback") == ("farneback", ["motion=farneback"])
    with pytest.raises(MwgaUserError, match="FIELD=VALUE"):
        estimator_overrides("dis:fast")


def test_flow_eval_command_writes_tables_and_pictures(host, tmp_path: Path, capsys) -> None:
    out, pictures = tmp_path / "eval", tmp_path / "png"
    args = ["flow-eval", "--estimators", "farneback,dis:preset=ultrafast", "--clips", "6", "--out", str(out)]
    args += ["dataset.size=16", "dataset.num_frames=3", "--border", "2"]
    assert main([*args, "--save-flow-png", str(pictures)]) == 0
    document = json.loads((out / "flow_eval.json").read_text())
    rows = document["scores"]
    assert len(rows) == 2 * 7  # (6 patterns + all) per estimator
    assert {r["estimator"] for r in rows} == {"farneback", "dis:preset=ultrafast"}
    assert all(0 <= r["epe"] < 1.0 and r["acc_3px"] == 1.0 for r in rows)
    assert document["settings"]["border"] == 2 and document["settings"]["frame_size"] == [16, 16]
    assert document["settings"]["clips"] == 6
    assert "preset='ultrafast'" in document["settings"]["estimators"]["dis:preset=ultrafast"]
    assert (out / "flow_eval.csv").read_text().count("\n") == 15
    assert "| farneback | horizontal pan |" in (out / "flow_eval.md").read_text()
    assert "EPE (px)" in capsys.readouterr().out

    import cv2

    image = cv2.imread(str(pictures / "zoom_in.png"))
    assert image.shape == (16 * 4, (4 * 16 + 3) * 4, 3)  # frame, truth, 2 estimators, 1-px gaps; x4
    assert (pictures / "zoom_in_ground_truth.flo").is_file()
    assert (pictures / "zoom_in_dis_preset_ultrafast.flo").is_file()


def test_without_estimators_the_configs_motion_is_evaluated(host, tmp_path: Path) -> None:
    args = ["flow-eval", "--clips", "6", "--out", str(tmp_path), "dataset.size=16", "dataset.num_frames=3"]
    assert main([*args, "motion=dis", "motion.preset=ultrafast"]) == 0
    settings = json.loads((tmp_path / "flow_eval.json").read_text())["settings"]
    assert list(settings["estimators"]) == ["dis"]
    assert "preset='ultrafast'" in settings["estimators"]["dis"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--estimators", "nonesuch"], "motion=nonesuch: no such option"),
        (["motion.no_such_field=1"], "motion.no_such_field: no such field in FarnebackConfig"),
        (["--estimators", "farneback:winsize=1"], "motion.winsize=1"),
        (["--estimators", "dis:colour=red"], "motion.colour: no such field in DisConfig"),
        (["elsewhere.x=1"], "elsewhere"),
        (["--border", "8"], "--border 8"),
        (["--estimators", "none"], "computes no flow"),
        (["dataset=video_folder"], "train_dir"),  # no ground-truth flow there, and no folder given
    ],
)
def test_flow_eval_command_reports_user_errors(
    host, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    args = ["flow-eval", "--clips", "6", "--out", str(tmp_path), "dataset.size=16", "dataset.num_frames=2"]
    if "dataset=video_folder" in extra:
        args = ["flow-eval", "--out", str(tmp_path)]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
