"""``mwga model-check``'s classifier: plain and paired accuracy on generated clips."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mwga_core.api.clips import ClipSet
from mwga_core.api.errors import ConfigValueError
from mwga_core.diffusion import model_check
from mwga_core.testing import make_context

CLASSES = ["a", "b", "c"]
PER_CLASS = 4


def fake_model(conditional: bool = True):
    return SimpleNamespace(adapter=SimpleNamespace(config=SimpleNamespace(conditional=conditional)))


def clips_with_descriptors(labels: np.ndarray) -> ClipSet:
    """Blank clips; the fake describer below returns ``descriptors`` for exactly these frames."""
    frames = np.zeros((len(labels), 2, 4, 4, 1), dtype=np.float32)
    return ClipSet(frames=frames, labels=labels, ids=[f"c{i}" for i in range(len(labels))])


@pytest.fixture
def check(monkeypatch, tmp_path):
    """Runs check_motion on given real and generated descriptors (class-major generated rows)."""

    def run(real: np.ndarray, real_labels: np.ndarray, generated: np.ndarray):
        train = clips_with_descriptors(real_labels)
        samples = clips_with_descriptors(np.repeat(np.arange(len(CLASSES)), PER_CLASS))
        tables = {id(train.frames): real, id(samples.frames): generated}
        monkeypatch.setattr(model_check, "sample_per_class", lambda *args, **kwargs: samples)
        return model_check.check_motion(
            fake_model(), train, CLASSES, PER_CLASS, make_context(tmp_path), lambda frames: tables[id(frames)]
        )

    return run


def real_descriptors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(3), 10)
    return np.eye(3)[labels] + 0.05 * rng.standard_normal((30, 3)), labels


def test_generated_clips_like_the_real_ones_are_recognised(check) -> None:
    rng = np.random.default_rng(0)
    real, labels = real_descriptors(rng)
    generated = np.eye(3)[np.repeat(np.arange(3), PER_CLASS)] + 0.05 * rng.standard_normal((12, 3))
    result = check(real, labels, generated)
    assert result.real_accuracy == 1.0
    assert result.accuracy == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert result.confusion.trace() == 12


def test_paired_accuracy_removes_a_motion_every_class_shares(check) -> None:
    # Each class moves a little its own way, and every sample drifts strongly like class "c": the plain
    # classifier says "c" for everything, the paired one sees what the label changed.
    rng = np.random.default_rng(1)
    real, labels = real_descriptors(rng)
    starts = rng.standard_normal((PER_CLASS, 3)) * 0.3  # the shared start of sample j of every class
    label_effect = 0.2 * np.eye(3)[np.repeat(np.arange(3), PER_CLASS)]
    generated = label_effect + np.tile(starts, (3, 1)) + np.array([0.0, 0.0, 2.0])
    result = check(real, labels, generated)
    assert result.accuracy["a"] == 0.0 and result.accuracy["b"] == 0.0
    assert result.paired_accuracy == {"a": 1.0, "b": 1.0, "c": 1.0}
    # samples that ignore their label carry no paired signal beyond chance
    ignored = np.tile(starts, (3, 1)) + 0.01 * rng.standard_normal((12, 3))
    assert check(real, labels, ignored).mean_paired_accuracy < 0.75


def test_an_unconditional_model_is_refused(tmp_path) -> None:
    train = clips_with_descriptors(np.arange(3))
    with pytest.raises(ConfigValueError, match="model.conditional"):
        model_check.check_motion(
            fake_model(False), train, CLASSES, PER_CLASS, make_context(tmp_path), lambda frames: frames
        )
