"""The model check of the retrain-without-top-k protocol (conditional models only).

Each retrained model's ``mwga model-check`` accuracy of the query's class and its drop against the full
model: the arithmetic, the fields on tiny real models, that each model is checked once and that the
seeded sampling gives the same check again (so the full model's drop for itself is 0).
"""

from __future__ import annotations

import numpy as np
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig

from mwga_core.api.models import TrainingConfig
from mwga_core.counterfactual.motion_check import ModelChecker, check_row
from mwga_core.counterfactual.retrain import Retrainer, retrain_summary, retrain_without_top_k
from mwga_core.diffusion.model_check import MotionCheck
from mwga_core.testing import make_context, small_corpus

CLASS_NAMES = ["horizontal_pan", "vertical_tilt", "rotation", "zoom", "diagonal_slide", "random"]


def motion_check(accuracy: dict[str, float], paired: dict[str, float]) -> MotionCheck:
    return MotionCheck(list(accuracy), accuracy, np.zeros((2, 2), dtype=np.int64), 1.0, paired)


def test_a_rows_check_is_the_query_class_accuracy_and_its_drop_from_the_full_model() -> None:
    full = motion_check({"a": 0.75, "b": 0.5}, {"a": 1.0, "b": 0.25})
    retrained = motion_check({"a": 0.25, "b": 1.0}, {"a": 1.0, "b": 0.0})
    assert check_row(full, retrained, "a") == {
        "class": "a",
        "accuracy": 0.25,
        "drop": 0.5,
        "paired_accuracy": 1.0,
        "paired_drop": 0.0,
    }
    # removing clips can also help a class: the drop is then negative
    assert check_row(full, retrained, "b")["drop"] == -0.5
    assert check_row(full, full, "b") == {
        "class": "b",
        "accuracy": 0.5,
        "drop": 0.0,
        "paired_accuracy": 0.25,
        "paired_drop": 0.0,
    }
    delta = {"loss": 0.0, "motion": 0.0}
    rows = [
        {"removal": "m", "k": 3, "delta": delta, "model_check": check_row(full, r, "a")}
        for r in (retrained, full)
    ]
    (summary,) = retrain_summary(rows)
    assert summary["model_check"] == {
        "accuracy": 0.5,
        "drop": 0.25,
        "paired_accuracy": 1.0,
        "paired_drop": 0.0,
    }
    # rows without a check (an unconditional model) keep the summary's shape
    plain = [{key: value for key, value in row.items() if key != "model_check"} for row in rows]
    assert "model_check" not in retrain_summary(plain)[0]


def conditional_adapter() -> VideoDenoiserAdapter:
    """A tiny class-conditional denoiser with classifier-free guidance and 2 DDIM steps (a fast check)."""
    training = TrainingConfig(steps=4, batch_size=4, warmup=1, checkpoints=[], bf16=False, label_dropout=0.2)
    config = VideoDenoiserConfig(
        name="video_denoiser",
        channels=8,
        blocks=1,
        diffusion_steps=100,
        sample_steps=2,
        guidance=2.0,
        conditional=True,
        training=training,
    )
    return VideoDenoiserAdapter(config)


def change_map(frames: np.ndarray) -> np.ndarray:
    """A cheap motion descriptor: where the clip changes. Shape: (N, T, H, W, C) -> (N, H * W)."""
    return np.abs(np.diff(frames, axis=1)).mean(axis=(1, 4)).reshape(len(frames), -1)


def retrainer_with_checks(tmp_path, per_class: int = 2, described: list | None = None) -> Retrainer:
    """A retrainer of a tiny conditional model with a checker; ``described`` collects the frames it
    describes (the training clips once, then each model's samples)."""
    corpus = small_corpus()
    ctx = make_context(tmp_path)

    def describe(frames: np.ndarray) -> np.ndarray:
        if described is not None:
            described.append(frames.copy())
        return change_map(frames)

    checker = ModelChecker(corpus.train, CLASS_NAMES, per_class, ctx, describe, context=corpus.queries)
    return Retrainer(conditional_adapter(), corpus.train, corpus.queries, 6, [30], ctx, checker)


def test_every_retrained_model_is_checked_once_and_the_check_is_seeded(tmp_path) -> None:
    described: list[np.ndarray] = []
    retrainer = retrainer_with_checks(tmp_path, described=described)
    train, queries = retrainer.train, retrainer.queries
    everything = np.arange(len(train))
    full = retrainer.measure(everything, check=True)
    assert full.check is not None and retrainer.checker.checks == 1
    # the training clips (the classifier) once, then 2 samples of each of the 6 classes
    assert [len(frames) for frames in described] == [len(train), 12]
    # method scores that rank the clips by index: the top 3 are the last three
    scores = {"by index": np.tile(np.arange(len(train), dtype=np.float64), (len(queries), 1))}
    query = 2
    rows = retrain_without_top_k(retrainer, scores, full.outputs, [3], [query], full.check)
    assert [row["removal"] for row in rows] == ["by index", "k random clips", "k random clips of the class"]
    class_name = CLASS_NAMES[int(queries.labels[query])]
    for row in rows:
        check = row["model_check"]
        assert check["class"] == class_name
        for accuracy, drop in (("accuracy", "drop"), ("paired_accuracy", "paired_drop")):
            assert 0.0 <= check[accuracy] <= 1.0 and -1.0 <= check[drop] <= 1.0
            assert check[drop] == getattr(full.check, accuracy)[class_name] - check[accuracy]
        # accuracies of 2 samples per class are multiples of 1/2
        assert check["accuracy"] * 2 == round(check["accuracy"] * 2)
    # each distinct model is trained and checked once (two removals of the same clips share one), and
    # the training clips are described only once
    assert retrainer.trained + retrainer.reused == 1 + len(rows)
    assert retrainer.checker.checks == retrainer.trained == len(described) - 1
    # asked again, the full model is neither measured nor checked again
    again = retrainer.measure(everything, check=True)
    assert again.cached and retrainer.checker.checks == retrainer.trained and again.check is full.check

    # a fresh run reads the full model from the store and samples the same clips: a drop of 0 for itself
    fresh_described: list[np.ndarray] = []
    fresh = retrainer_with_checks(tmp_path, described=fresh_described)
    reread = fresh.measure(everything, check=True)
    assert (fresh_described[1] == described[1]).all()  # the same samples, bit for bit
    # while another model's samples, from the same noise, differ
    assert not (described[2] == described[1]).all()
    assert reread.cached and fresh.trained == 0 and fresh.cached == 1
    assert reread.check.accuracy == full.check.accuracy
    assert reread.check.paired_accuracy == full.check.paired_accuracy
    assert (reread.check.confusion == full.check.confusion).all()
    itself = check_row(full.check, reread.check, class_name)
    assert itself["drop"] == 0.0 and itself["paired_drop"] == 0.0


def test_a_model_measured_without_its_check_is_checked_when_asked(tmp_path) -> None:
    retrainer = retrainer_with_checks(tmp_path, per_class=1)
    keep = np.arange(0, len(retrainer.train), 2)
    plain = retrainer.measure(keep)  # as the LDS subsets are measured: no check
    assert plain.check is None and retrainer.checker.checks == 0
    checked = retrainer.measure(keep, check=True)
    assert checked.check is not None and retrainer.checker.checks == 1
    assert retrainer.trained == 1 and retrainer.reused == 1
    assert all((checked.outputs[name] == plain.outputs[name]).all() for name in plain.outputs)


def test_without_a_checker_rows_have_no_model_check(tmp_path) -> None:
    retrainer = retrainer_with_checks(tmp_path)
    retrainer.checker = None  # as for an unconditional model
    everything = np.arange(len(retrainer.train))
    full = retrainer.measure(everything, check=True)
    assert full.check is None
    scores = {"by index": np.tile(everything.astype(np.float64), (len(retrainer.queries), 1))}
    rows = retrain_without_top_k(retrainer, scores, full.outputs, [3], [0], full.check)
    assert rows and all("model_check" not in row for row in rows)
    assert all("model_check" not in row for row in retrain_summary(rows))
