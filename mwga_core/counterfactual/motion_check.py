"""The model check of retrained conditional models: what removing clips did to the query's class's motion.

For a conditional model (``model.conditional=true``, e.g. ``counterfactual.model=video_denoiser_guided``,
the model of ``method=ours_generative``) every model of the retrain-without-top-k protocol also gets the
check of ``mwga model-check`` (:func:`~mwga_core.diffusion.model_check.check_motion`): clips sampled per
class, recognised by the nearest class-mean motion descriptor of the *full* training set, so the
classifier is the same for every model and only the generator changes. A row's ``model_check`` is the
query's class's (paired) accuracy of its retrained model and the *drop* against the model trained on every
clip (full - retrained; positive = removing the clips hurt the model's ability to generate that motion).

Every model's samples start from the same noise (``ctx.seed_for("generated-clips", "check")``, as
``mwga model-check``'s), so two models differ only by their weights and a rerun gives the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.trained_model import TrainedModel
from mwga_core.diffusion.model_check import Describer, MotionCheck, check_motion

#: the accuracies a row reports, each with its drop (full - retrained)
CHECK_FIELDS: tuple[tuple[str, str], ...] = (("accuracy", "drop"), ("paired_accuracy", "paired_drop"))


@dataclass
class ModelChecker:
    """Runs the model check of ``mwga model-check`` on each model it is given, with one classifier.

    Attributes:
        train: the full training clips, whose class-mean descriptors classify every model's samples.
        per_class: samples per class (``counterfactual.check_per_class``).
        describe: clips (N, T, H, W, C) -> (N, B) motion descriptors (the config's motion + descriptor).
        context: clips whose first frames an image-to-video model continues (the queries).
        checks / seconds: models checked, and the wall time spent checking them.
    """

    train: ClipSet
    class_names: list[str]
    per_class: int
    ctx: RunContext
    describe: Describer
    context: ClipSet | None = None
    checks: int = 0
    seconds: float = 0.0
    _train_descriptors: np.ndarray | None = field(default=None, repr=False)

    def train_descriptors(self) -> np.ndarray:
        """``describe(train.frames)``, computed once: every model is classified against the same
        training clips, and their flow is the costly part. Shape: (N, B)."""
        if self._train_descriptors is None:
            self._train_descriptors = self.describe(self.train.frames)
        return self._train_descriptors

    def __call__(self, model: TrainedModel) -> MotionCheck:
        """The check of one model (its last checkpoint)."""
        start = time.perf_counter()
        names, context = self.class_names, self.context
        check = check_motion(
            model,
            self.train,
            names,
            self.per_class,
            self.ctx,
            self.describe,
            context=context,
            train_descriptors=self.train_descriptors(),
        )
        self.checks += 1
        self.seconds += time.perf_counter() - start
        return check


def check_row(full: MotionCheck, retrained: MotionCheck, class_name: str) -> dict[str, object]:
    """A retrain row's ``model_check``: the query's class, its accuracies with the retrained model and
    their drops against the full model (full - retrained, in [-1, 1])."""
    row: dict[str, object] = {"class": class_name}
    for name, drop in CHECK_FIELDS:
        value = getattr(retrained, name)[class_name]
        row[name] = value
        row[drop] = getattr(full, name)[class_name] - value
    return row


def check_summary(rows: Sequence[dict]) -> dict[str, float]:
    """The mean of each accuracy and drop of the rows' ``model_check`` (over queries)."""
    checks = [row["model_check"] for row in rows]
    return {key: float(np.mean([c[key] for c in checks])) for pair in CHECK_FIELDS for key in pair}


def check_document(check: MotionCheck, per_class: int) -> dict[str, object]:
    """The full model's check as ``counterfactual.json`` keeps it (``full_model_check``)."""
    return {
        "samples_per_class": per_class,
        "accuracy": check.accuracy,
        "paired_accuracy": check.paired_accuracy,
        "real_clip_accuracy": check.real_accuracy,
        "chance": 1.0 / len(check.class_names),
    }
