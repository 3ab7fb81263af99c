"""Did the trained model learn motion? Sample clips per class and recognise their class from flow.

Each class's samples go through Farnebäck flow and HOOF (the registered ``farneback`` and ``hoof``
components with their default configs); a sample is classified by the nearest (Euclidean) class-mean
HOOF descriptor of the training corpus. Chance is 1 / number of classes. ``mwga model-check`` prints it.

Samples of a weak model share a motion of their own (drift, flicker) that pulls every class towards one
real class. The *paired* accuracy removes it: sample j of every class starts from the same noise (and
context frames), so each sample's descriptor minus the mean over classes of the samples started like it
is what the class label changed. It is classified by the largest cosine with the real class means
centred the same way: the label's effect is small next to a real clip's motion, so its direction is
compared, not its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter
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


def hoof_descriptors(frames: np.ndarray, ctx: RunContext) -> np.ndarray:
    """Farnebäck + HOOF (default configs) of clips (N, T, H, W, C). Returns (N, B) float32."""
    from mwga_core.plugin_host.host import get_host

    host = get_host()
    motion = host.build("motion", {"name": "farneback"})
    descriptor = host.build("descriptor", {"name": "hoof"})
    flows = motion.estimate(frames, ctx)
    return descriptor.describe(frames, flows, ctx)


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
    context: ClipSet | None = None,
) -> MotionCheck:
    """Sample ``per_class`` clips per class and classify them by nearest class-mean HOOF.

    ``context``: held-out clips whose first frames an image-to-video model continues (see
    :func:`sample_per_class`).
    """
    require_conditional(model.adapter)
    classes = len(class_names)
    train_desc = hoof_descriptors(train.frames, ctx).astype(np.float64)
    means = np.stack([train_desc[train.labels == c].mean(axis=0) for c in range(classes)])

    def classify(desc: np.ndarray) -> np.ndarray:
        return np.argmin(((desc[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)

    def per_class_accuracy(predicted: np.ndarray) -> dict[str, float]:
        hits = predicted.reshape(classes, per_class) == np.arange(classes)[:, None]
        return {name: float(hits[c].mean()) for c, name in enumerate(class_names)}

    real_accuracy = float((classify(train_desc) == train.labels).mean())
    samples = sample_per_class(model, per_class, ctx, context=context)
    # class-major rows: sample j of class c is row c * per_class + j
    sample_desc = hoof_descriptors(samples.frames, ctx).astype(np.float64)
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


def model_check_command(args: list[str]) -> int:
    """``mwga model-check [--per-class N] [--json] [overrides]``: train or load the model, then check it.

    Overrides are Hydra overrides of the run config (``model.training.steps=800``, ``seed=1``,
    ``dataset.num_clips=100``); the model comes from the same cache ``mwga gradient=diffusion`` uses.
    """
    import json

    from hydra import compose, initialize_config_module
    from rich.table import Table

    from mwga_core.api.context import RunContext
    from mwga_core.api.progress import progress_wanted
    from mwga_core.config.schema import cache_path, register_configs
    from mwga_core.pipeline.model_stage import load_or_train_model
    from mwga_core.plugin_host.host import get_host
    from mwga_core.reporting.run_outputs import table_console

    per_class, as_json, overrides = 16, False, []
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if word == "--per-class" and rest:
            per_class = int(rest.pop(0))
        elif word == "--json":
            as_json = True
        else:
            overrides.append(word)
    host = get_host()
    register_configs(host)
    with initialize_config_module("mwga_conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    console = table_console()
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        show_progress=progress_wanted(console),
    )
    corpus = host.build("dataset", cfg.dataset).load(ctx)
    adapter = host.build("model", cfg.model)
    require_conditional(adapter)
    model = load_or_train_model(adapter, corpus.train, ctx, num_classes=len(corpus.class_names))
    check = check_motion(model, corpus.train, corpus.class_names, per_class, ctx, context=corpus.queries)
    log = model.info["training"]
    summary = {
        "model_folder": str(model.folder),
        "loaded_from_cache": model.loaded_from_cache,
        "training": {
            k: log[k] for k in ("steps", "first_loss", "final_loss", "seconds", "cpu_seconds", "parameters")
        },
        "samples_per_class": per_class,
        "accuracy": check.accuracy,
        "mean_accuracy": check.mean_accuracy,
        "paired_accuracy": check.paired_accuracy,
        "mean_paired_accuracy": check.mean_paired_accuracy,
        "chance": 1.0 / len(corpus.class_names),
        "real_clip_accuracy": check.real_accuracy,
        "confusion": check.confusion.tolist(),
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"generated clips recognised by nearest class-mean HOOF ({per_class} per class)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("paired accuracy", justify="right")
    for name, value in check.accuracy.items():
        table.add_row(name, f"{value:.3f}", f"{check.paired_accuracy[name]:.3f}")
    table.add_row("mean", f"{check.mean_accuracy:.3f}", f"{check.mean_paired_accuracy:.3f}")
    console.print(table)
    console.print(
        f"chance {summary['chance']:.3f}; the same classifier on the training clips: {check.real_accuracy:.3f}; "
        f"model: {log['parameters']} parameters, {log['steps']} steps, loss {log['final_loss']:.4f}, "
        f"trained in {log['seconds']:.1f} s ({'cache' if model.loaded_from_cache else 'this run'})"
    )
    return 0
