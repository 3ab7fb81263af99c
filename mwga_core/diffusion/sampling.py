"""Sampling a trained model: clips per class, for ``mwga model-check`` and for generated queries.

Sample j of every class starts from the same noise (and, for an image-to-video model, continues the same
context clip), so the classes differ only by the label they were asked for.
"""

from __future__ import annotations

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter
from mwga_core.api.trained_model import TrainedModel


def sample_per_class(
    model: TrainedModel,
    per_class: int,
    ctx: RunContext,
    purpose: str = "check",
    context: ClipSet | None = None,
) -> ClipSet:
    """``per_class`` DDIM samples of the last checkpoint conditioned on each class, as a ClipSet.

    Ids are ``generated-<class index>-<j>``; labels are the conditioned classes. Sample j of every class
    starts from the same noise (seeded from ``ctx.seed_for("generated-clips", purpose)``) and, for an
    image-to-video model (``model.context_frames`` k > 0), continues the first k frames of the same
    ``context`` clip (clip j mod len(context)): the classes differ only by the label they were asked for.
    """
    import torch

    k = model.adapter.config.context_frames
    start = None
    if k:
        if context is None or len(context) == 0:
            raise ValueError(f"model.context_frames={k}: sampling needs clips whose first frames to continue")
        start = model.adapter.encode(context.frames[np.arange(per_class) % len(context), :k])
    module = model.module(device=ctx.device)
    seed = ctx.seed_for("generated-clips", purpose)
    if not model.adapter.config.conditional:
        # An unconditional model has no class to ask for: the samples' labels are unknown (-1).
        classes: list[int | None] = [None] * model.num_classes
        labels = np.full(model.num_classes * per_class, -1, dtype=np.int64)
    else:
        classes = list(range(model.num_classes))
        labels = np.repeat(np.arange(model.num_classes), per_class).astype(np.int64)
    frames = [
        model.adapter.sample(
            module,
            None if label is None else torch.full((per_class,), label, dtype=torch.int64),
            per_class,
            model.clip_shape,
            seed=seed if label is not None else ctx.seed_for("generated-clips", purpose, index),
            device=ctx.device,
            null_label=model.null_label,
            context=start,
        )
        for index, label in enumerate(classes)
    ]
    ids = [f"generated-{c}-{j}" for c in range(model.num_classes) for j in range(per_class)]
    return ClipSet(frames=np.concatenate(frames), labels=labels, ids=ids)


def generated_queries(
    model: TrainedModel,
    class_names: list[str],
    per_class: int,
    ctx: RunContext,
    context: ClipSet | None = None,
) -> ClipSet:
    """``query=generated``: ``per_class`` query clips per class sampled from ``model``.

    Ids are ``generated-<class name>-<j>``, labels the classes they were sampled for; ``context``: the
    held-out clips whose first frames an image-to-video model continues.
    """
    check_generates_queries(model.adapter)
    samples = sample_per_class(model, per_class, ctx, purpose="queries", context=context)
    ids = [f"generated-{class_names[label]}-{j % per_class}" for j, label in enumerate(samples.labels)]
    return ClipSet(frames=samples.frames, labels=samples.labels, ids=ids)


def check_generates_queries(adapter: ModelAdapter) -> None:
    """``query=generated`` samples clips of each class: refuse an unconditional model, before any work."""
    if not adapter.config.conditional:
        raise ConfigValueError(
            "query",
            "generated",
            "heldout: an unconditional model (model.conditional=false) has no class to generate; "
            "method=ours_generative trains one that can",
        )
