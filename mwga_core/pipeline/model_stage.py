"""The ``model`` stage: the trained model that gradient sources differentiate and queries are sampled from.

It runs after the motion and descriptor stages and before any gradient, only for gradient sources that
declare :attr:`~mwga_core.api.gradients.GradientSource.uses_model`. The model is, in this order:

1. the adapter's own trained weights (:meth:`~mwga_core.api.models.ModelAdapter.pretrained`), when it
   has some: nothing is trained;
2. the model trained on these training clips before, read from the model store
   (:mod:`mwga_core.storage.model_store`) under the trainer's key
   (:func:`~mwga_core.diffusion.training.training_key`);
3. otherwise trained now (:func:`~mwga_core.diffusion.training.train_denoiser`, which needs an adapter
   that :attr:`~mwga_core.api.models.ModelAdapter.can_train`) and written to the store.

The store entry's lock is held from the read to the last write, so two runs that need the same model
train it once. A damaged store entry is reported, removed and trained again; in a store that cannot be
written the model is trained and kept in memory (both with a warning from the store).
"""

from __future__ import annotations

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientSource
from mwga_core.api.models import ModelAdapter
from mwga_core.api.trained_model import TrainedModel
from mwga_core.diffusion.training import check_trainable, checkpoint_steps, train_denoiser, training_key
from mwga_core.storage.keys import plain
from mwga_core.storage.model_store import ModelStore


def data_classes(clips: ClipSet) -> int:
    """The number of classes a model of these clips is built for: the largest label + 1 (at least 1)."""
    return max(int(clips.labels.max()) + 1, 1)


def load_or_train_model(
    adapter: ModelAdapter, train: ClipSet, ctx: RunContext, num_classes: int | None = None
) -> TrainedModel:
    """The ``model`` stage (see the module docstring), timed as stage ``model``.

    Args:
        adapter: the run's model adapter (config group ``model``).
        train: the training clips the model is trained on.
        num_classes: classes of the data (default: :func:`data_classes` of ``train``).
    """
    num_classes = data_classes(train) if num_classes is None else num_classes
    clip_shape = tuple(int(s) for s in train.frames.shape[1:])
    with ctx.stage("model") as stage_info:
        pretrained = adapter.pretrained(clip_shape, num_classes)
        if pretrained is not None:
            stage_info["status"] = "pretrained"
            checkpoints = dict(pretrained.checkpoints)
            return TrainedModel(
                adapter, clip_shape, num_classes, pretrained.key, checkpoints, {"pretrained": True}
            )
        check_trainable(adapter, train)
        store = ModelStore(ctx.cache_dir)
        key = training_key(adapter, train, num_classes, ctx.seed)
        steps = checkpoint_steps(adapter)
        with store.lock(key):
            trained = store.read(key, adapter, clip_shape, num_classes, steps)
            if trained is None:
                trained = _train_into_store(store, key, adapter, train, num_classes, ctx)
        stage_info["status"] = "cached" if trained.loaded_from_cache else "trained"
    return trained


def _train_into_store(
    store: ModelStore, key: str, adapter: ModelAdapter, train: ClipSet, num_classes: int, ctx: RunContext
) -> TrainedModel:
    """Train, write every checkpoint and then ``model.json`` into entry ``key``."""
    clip_shape = tuple(int(s) for s in train.frames.shape[1:])
    checkpoints = {}

    def save(step: int, weights: dict) -> None:
        checkpoints[step] = store.save_checkpoint(key, step, weights)

    log = train_denoiser(adapter, train, num_classes, ctx, save)
    info = {
        "key": key,
        "adapter": plain(adapter.config),
        "num_classes": num_classes,
        "clip_shape": list(clip_shape),
        "num_clips": len(train),
        "seed": ctx.seed,
        "checkpoint_steps": sorted(checkpoints),
        "training": log,
    }
    folder = store.finish(key, info)
    where = f"cached in {folder}" if folder is not None else "kept in memory only"
    ctx.console.print(
        f"[dim]trained {log['parameters']} parameters for {log['steps']} steps in {log['seconds']:.1f} s "
        f"(loss {log['first_loss']:.4f} -> {log['final_loss']:.4f}); {where}[/dim]"
    )
    return TrainedModel(adapter, clip_shape, num_classes, key, checkpoints, info, False, folder)


def prepare_gradient_source(
    gradient: GradientSource, model: ModelAdapter | None, train: AnalysedClips, ctx: RunContext
) -> TrainedModel | None:
    """Prepare ``gradient`` on the training clips, then, for a source that uses a model, run the model
    stage and bind its result to the source. Returns the trained model, or None."""
    gradient.prepare(train, ctx)
    if not gradient.uses_model:
        return None
    if model is None:
        raise ValueError(f"gradient source {gradient!r} uses a model: build the model adapter first")
    trained = load_or_train_model(model, train.clips, ctx)
    gradient.bind_model(trained)
    return trained
