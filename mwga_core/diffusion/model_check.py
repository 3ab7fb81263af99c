"""Did the trained model learn motion? Sample clips per class and recognise their class from flow.

Each class's samples go through the run config's motion estimator and descriptor (Farnebäck flow and
HOOF by default; :func:`describe_motion`); a sample is classified by the nearest (Euclidean) class-mean
descriptor of the training corpus. Chance is 1 / number of classes. ``mwga model-check``
(:mod:`mwga_core.cli.model_check`) prints it.

Samples of a weak model share a motion of their own (drift, flicker) that pulls every class towards one
real class. The *paired* accuracy removes it: sample j of every class starts from the same noise (and
context frames), so each sample's descriptor minus the mean over classes of the samples started like it
is what the class label changed. It is classified by the largest cosine with the real class means
centred the same way: the label's effect is small next to a real clip's motion, so its direction is
compared, not its size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.descriptors import Descriptor
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter
from mwga_core.api.motion import MotionEstimator
from mwga_core.api.trained_model import TrainedModel
from mwga_core.diffusion.sampling import sample_per_class


@dataclass
class MotionCheck:
    """Per-class accuracy of a flow classifier on generated clips.

    Attributes:
        accuracy: class name -> fraction of its samples classified as that class.
        confusion: (classes, classes) int64 counts, rows = conditioned class, columns = recognised class.
        real_accuracy: the same classifier on the training clips themselves (its ceiling).
        paired_accuracy: class name -> the paired accuracy (see the module docstring).
    """

    class_names: list[str]
    accuracy: dict[str, float]
    confusion: np.ndarray
    real_accuracy: float
    paired_accuracy: dict[str, float]

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracy.values())))

    @property
    def mean_paired_accuracy(self) -> float:
        return float(np.mean(list(self.paired_accuracy.values())))


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


#: clips (N, T, H, W, C) -> their (N, B) motion descriptors
Describer = Callable[[np.ndarray], np.ndarray]


def describe_motion(motion: MotionEstimator, descriptor: Descriptor, ctx: RunContext) -> Describer:
    """The descriptors the run config's ``motion`` and ``descriptor`` give clips (flow only if needed)."""

    def describe(frames: np.ndarray) -> np.ndarray:
        flows = motion.estimate(frames, ctx) if descriptor.needs_flow else None
        return descriptor.describe(frames, flows, ctx)

    return describe


def require_conditional(adapter: ModelAdapter) -> None:
    """The check samples clips of each class: refuse an unconditional model, before any training."""
    if not adapter.config.conditional:
        raise ConfigValueError(
            "model.conditional",
            False,
            "true: the check samples clips of each class, which needs a conditional model "
            "(method=ours uses an unconditional one; try method=ours_generative)",
        )


def check_motion(
    model: TrainedModel,
    train: ClipSet,
    class_names: list[str],
    per_class: int,
    ctx: RunContext,
    describe: Describer,
    context: ClipSet | None = None,
    train_descriptors: np.ndarray | None = None,
) -> MotionCheck:
    """Sample ``per_class`` clips per class and classify them by nearest class-mean descriptor.

    ``describe``: the motion descriptors of clips (:func:`describe_motion`). ``context``: held-out clips
    whose first frames an image-to-video model continues (see :func:`sample_per_class`).
    ``train_descriptors``: ``describe(train.frames)`` when the caller already has it (it checks several
    models against the same training clips). Shape: (N, B).
    """
    require_conditional(model.adapter)
    classes = len(class_names)
    if train_descriptors is None:
        train_descriptors = describe(train.frames)
    train_desc = np.asarray(train_descriptors, dtype=np.float64)
    means = np.stack([train_desc[train.labels == c].mean(axis=0) for c in range(classes)])

    def classify(desc: np.ndarray) -> np.ndarray:
        return np.argmin(((desc[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)

    def per_class_accuracy(predicted: np.ndarray) -> dict[str, float]:
        hits = predicted.reshape(classes, per_class) == np.arange(classes)[:, None]
        return {name: float(hits[c].mean()) for c, name in enumerate(class_names)}

    real_accuracy = float((classify(train_desc) == train.labels).mean())
    samples = sample_per_class(model, per_class, ctx, context=context)
    # class-major rows: sample j of class c is row c * per_class + j
    sample_desc = describe(samples.frames).astype(np.float64)
    predicted = classify(sample_desc)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (samples.labels, predicted), 1)
    by_start = sample_desc.reshape(classes, per_class, -1)
    label_effect = (by_start - by_start.mean(axis=0, keepdims=True)).reshape(classes * per_class, -1)
    centred_means = means - means.mean(axis=0, keepdims=True)
    cosine = _unit(label_effect) @ _unit(centred_means).T
    paired = np.argmax(cosine, axis=1)
    return MotionCheck(
        class_names, per_class_accuracy(predicted), confusion, real_accuracy, per_class_accuracy(paired)
    )
