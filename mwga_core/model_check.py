"""Did the trained model learn motion? Sample clips per class and recognise their class from flow.

Each class's samples go through Farnebäck flow and HOOF (the registered ``farneback`` and ``hoof``
components with their default configs); a sample is classified by the nearest (Euclidean) class-mean
HOOF descriptor of the training corpus. Chance is 1 / number of classes. ``mwga model-check`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core.clips import ClipSet
from mwga_core.context import RunContext
from mwga_core.training import TrainedModel


@dataclass
class MotionCheck:
    """Per-class accuracy of a flow classifier on generated clips.

    Attributes:
        accuracy: class name -> fraction of its samples classified as that class.
        confusion: (classes, classes) int64 counts, rows = conditioned class, columns = recognised class.
        real_accuracy: the same classifier on the training clips themselves (its ceiling).
    """

    class_names: list[str]
    accuracy: dict[str, float]
    confusion: np.ndarray
    real_accuracy: float

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracy.values())))


def hoof_descriptors(frames: np.ndarray, ctx: RunContext) -> np.ndarray:
    """Farnebäck + HOOF (default configs) of clips (N, T, H, W, C). Returns (N, B) float32."""
    from mwga_core.plugin_host import get_host

    host = get_host()
    motion = host.build("motion", {"name": "farneback"})
    descriptor = host.build("descriptor", {"name": "hoof"})
    flows = motion.estimate(frames, ctx)
    return descriptor.describe(frames, flows, ctx)


def sample_per_class(model: TrainedModel, per_class: int, ctx: RunContext, purpose: str = "check") -> ClipSet:
    """``per_class`` DDIM samples of the last checkpoint conditioned on each class, as a ClipSet.

    Ids are ``generated-<class index>-<j>``; labels are the conditioned classes. The starting noise is
    seeded from ``ctx.seed_for("generated-clips", purpose)``.
    """
    import torch

    if not model.adapter.config.conditional:
        labels = np.zeros(model.num_classes * per_class, dtype=np.int64)
        conditioning = None
    else:
        labels = np.repeat(np.arange(model.num_classes), per_class).astype(np.int64)
        conditioning = torch.as_tensor(labels)
    module = model.module(device=ctx.device)
    frames = model.adapter.sample(
        module,
        conditioning,
        len(labels),
        model.clip_shape,
        seed=ctx.seed_for("generated-clips", purpose),
        device=ctx.device,
    )
    ids = [f"generated-{c}-{j}" for c in range(model.num_classes) for j in range(per_class)]
    return ClipSet(frames=frames, labels=labels, ids=ids)


def check_motion(
    model: TrainedModel, train: ClipSet, class_names: list[str], per_class: int, ctx: RunContext
) -> MotionCheck:
    """Sample ``per_class`` clips per class and classify them by nearest class-mean HOOF."""
    classes = len(class_names)
    train_desc = hoof_descriptors(train.frames, ctx).astype(np.float64)
    means = np.stack([train_desc[train.labels == c].mean(axis=0) for c in range(classes)])

    def classify(desc: np.ndarray) -> np.ndarray:
        return np.argmin(((desc[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)

    real_accuracy = float((classify(train_desc) == train.labels).mean())
    samples = sample_per_class(model, per_class, ctx)
    predicted = classify(hoof_descriptors(samples.frames, ctx).astype(np.float64))
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (samples.labels, predicted), 1)
    accuracy = {
        name: float(confusion[c, c] / max(1, confusion[c].sum())) for c, name in enumerate(class_names)
    }
    return MotionCheck(class_names, accuracy, confusion, real_accuracy)
