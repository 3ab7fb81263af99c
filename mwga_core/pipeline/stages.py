"""The pipeline's stages, read from the stage cache when their key is there (see :mod:`mwga_core.storage.stage_cache`).

Each function computes one stage's key from its component and its inputs' keys, then fetches the output
from the cache or computes and stores it. :mod:`mwga_core.pipeline.run` strings them together; the
features stage is :mod:`mwga_core.pipeline.featurize`, which replays cached raw gradients through
:func:`gradient_chunks`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mwga_core.api.clips import AnalysedClips, ClipSet, Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientChunk, GradientSource
from mwga_core.storage.keys import clips_fingerprint, digest, plain
from mwga_core.storage.stage_cache import PendingEntry, StageCache

if TYPE_CHECKING:
    from mwga_core.api.datasets import Dataset
    from mwga_core.api.descriptors import Descriptor
    from mwga_core.api.models import ModelAdapter
    from mwga_core.api.motion import MotionEstimator
    from mwga_core.api.projectors import Projector
    from mwga_core.api.scorers import Scorer

log = logging.getLogger("mwga")
SPLITS = (("train", "train"), ("queries", "query"))


def _corpus_arrays(corpus: Corpus) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"class_names": list(corpus.class_names), "skipped": list(corpus.skipped)}
    for split, prefix in SPLITS:
        clips: ClipSet = getattr(corpus, split)
        arrays[f"{prefix}_frames"] = clips.frames
        arrays[f"{prefix}_labels"] = clips.labels
        if clips.gt_flow is not None:
            arrays[f"{prefix}_gt_flow"] = clips.gt_flow
        meta[f"{prefix}_ids"] = list(clips.ids)
    return arrays, meta


def _corpus_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Corpus:
    sets = {
        split: ClipSet(
            frames=arrays[f"{prefix}_frames"],
            labels=arrays[f"{prefix}_labels"],
            ids=list(meta[f"{prefix}_ids"]),
            gt_flow=arrays.get(f"{prefix}_gt_flow"),
        )
        for split, prefix in SPLITS
    }
    return Corpus(class_names=list(meta["class_names"]), skipped=list(meta["skipped"]), **sets)


def _load(dataset: Dataset, ctx: RunContext) -> Corpus:
    # a pulsing bar: reading or rendering clips can take a while, and datasets do not report progress
    with ctx.progress(f"dataset ({type(dataset).__name__})", None):
        return dataset.load(ctx)


def load_corpus(dataset: Dataset, ctx: RunContext, cache: StageCache) -> tuple[Corpus, str]:
    """The dataset's corpus and its key.

    A dataset whose ``cache_fingerprint()`` is None (the default for datasets that do not say what their
    clips depend on) is loaded every run and keyed by its content instead.
    """
    fingerprint = getattr(dataset, "cache_fingerprint", lambda: None)()
    if fingerprint is None:
        corpus = _load(dataset, ctx)
        return corpus, "content-" + digest(
            [clips_fingerprint(corpus.train), clips_fingerprint(corpus.queries), corpus.class_names]
        )
    key = cache.key("dataset", dataset, extra={"seed": ctx.seed, "fingerprint": fingerprint})
    output = cache.fetch("dataset", key, lambda: _corpus_arrays(_load(dataset, ctx)), config=dataset.config)
    return _corpus_from_arrays(output.arrays, output.meta), key


def cached_flows(
    clips: ClipSet, motion: MotionEstimator, ctx: RunContext, cache: StageCache, source_key: str, label: str
) -> tuple[np.ndarray | None, str]:
    """(N, T-1, H, W, 2) float32 flows of the clips (None for ``motion=none``) and their key."""
    key = cache.key("flows", motion, inputs=[source_key])
    if not motion.produces_flow:
        return None, key
    n, t, h, w, _ = clips.frames.shape
    output = cache.fetch(
        "flows",
        key,
        lambda: ({"flows": motion.estimate(clips.frames, ctx)}, {"clips": n}),
        label=label,
        config=motion.config,
        expect={"flows": (n, t - 1, h, w, 2)},
    )
    return output.arrays["flows"], key


def cached_descriptors(
    clips: ClipSet,
    flows: np.ndarray | None,
    descriptor: Descriptor,
    ctx: RunContext,
    cache: StageCache,
    flows_key: str,
    label: str,
) -> tuple[np.ndarray, str]:
    """(N, B) descriptors of the clips and their key."""
    key = cache.key("descriptors", descriptor, inputs=[flows_key])

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # describe() sees the whole split at once (a descriptor may normalise across clips), so the bar
        # has no count to show, only that the stage is running and for how long.
        with ctx.progress(f"descriptors ({type(descriptor).__name__})", None):
            return {"descriptors": np.asarray(descriptor.describe(clips.frames, flows, ctx))}, {}

    output = cache.fetch(
        "descriptors",
        key,
        compute,
        label=label,
        config=descriptor.config,
        expect={"descriptors": (len(clips), None)},
    )
    return output.arrays["descriptors"], key


@dataclass
class RawGradients:
    """Where one split's unprojected gradients are cached (``cache.gradients``).

    Attributes:
        cache: the stage cache.
        key: the split's gradient key (:func:`gradient_key`).
        label: the split's name, for the stage summary.
        max_bytes: splits whose K x N x D float32 gradients are larger are not stored.
    """

    cache: StageCache
    key: str
    label: str = ""
    max_bytes: float = float("inf")


def gradient_key(
    cache: StageCache,
    gradient: GradientSource,
    model: ModelAdapter | None,
    descriptors_key: str,
    train_key: str,
    ctx: RunContext,
) -> str:
    """The key of a split's raw gradients: its descriptors key, the gradient source and its weights.

    ``train_key`` (the training split's descriptors key) is in it too: ``prepare`` saw the training
    clips, and a source may derive query gradients from what it learned there. The model adapter's
    config and code count as the source's own.
    """
    extra = {
        "checkpoint_id": gradient.checkpoint_id(),
        "device": ctx.device,
        "model": None if model is None else plain(model.config),
    }
    return cache.key(
        "gradients", gradient, inputs=[descriptors_key, train_key], extra=extra, also_code=[model]
    )


def features_key(cache: StageCache, projector: Projector, gradients_key: str) -> str:
    """The key of a split's projected features (the chain's link from gradients to scores)."""
    return cache.key("features", projector, inputs=[gradients_key])


def gradient_chunks(
    pending: AnalysedClips,
    todo: np.ndarray,
    total: int,
    gradient: GradientSource,
    ctx: RunContext,
    raw: RawGradients | None,
) -> Iterator[GradientChunk]:
    """The gradient source's chunks for ``pending`` (clips ``todo`` of a split of ``total``).

    With ``raw``, a split whose gradients are cached is replayed chunk by chunk exactly as the source
    yielded it (same chunks, so the projections are bit-identical to fresh ones); otherwise the source's
    chunks are written to the cache as they pass, when the whole split is being computed.
    """
    if raw is None or not raw.cache.enabled:
        yield from gradient.iter_gradients(pending, ctx)
        return
    found = raw.cache.load(
        "gradients",
        raw.key,
        {"grads": (None, total, None), "order": (total,), "chunk_sizes": (None,)},
        mmap=True,
    )
    if found is not None:
        raw.cache.events.append(("gradients", raw.label, "cached"))
        yield from _replay(found[0], todo, total, found[1].get("device", "cpu"))
        return
    raw.cache.events.append(("gradients", raw.label, "computed"))
    if len(todo) != total:  # resuming a features entry: a partial split is not worth storing
        yield from gradient.iter_gradients(pending, ctx)
        return
    yield from _record(gradient.iter_gradients(pending, ctx), raw, total)


def _replay(
    arrays: dict[str, np.ndarray], todo: np.ndarray, total: int, device: str
) -> Iterator[GradientChunk]:
    import torch

    position = np.full(total, -1, dtype=np.int64)
    position[todo] = np.arange(len(todo))
    order, start = arrays["order"], 0
    for size in arrays["chunk_sizes"].tolist():
        indices = np.asarray(order[start : start + size])
        start += size
        wanted = indices[position[indices] >= 0]
        if len(wanted):
            grads = np.ascontiguousarray(arrays["grads"][:, wanted])
            # on the device the source yielded on: projection sums in a device-dependent precision
            yield GradientChunk(indices=position[wanted], grads=torch.from_numpy(grads).to(device))


def _record(chunks: Iterator[GradientChunk], raw: RawGradients, total: int) -> Iterator[GradientChunk]:
    entry: PendingEntry | None = None
    grads: np.ndarray | None = None
    order: list[np.ndarray] = []
    device = "cpu"
    try:
        for chunk in chunks:
            yield chunk
            if entry is None and not order:
                k, _, d = chunk.grads.shape
                size = k * total * d * 4
                if size > raw.max_bytes or chunk.grads.dtype != _torch_float32():
                    log.info(
                        f"not caching {raw.label} gradients: {size / 2**30:.2f} GiB "
                        f"(cache.gradients_max_gb={raw.max_bytes / 2**30:g}), dtype {chunk.grads.dtype}"
                    )
                    yield from chunks
                    return
                device = str(chunk.grads.device)
                entry = raw.cache.begin("gradients", raw.key)
                if entry is None:  # the cache cannot be written (it warned): pass the rest on unstored
                    yield from chunks
                    return
                grads = entry.memmap("grads", (k, total, d), np.float32)
            indices = np.asarray(chunk.indices, dtype=np.int64)
            grads[:, indices] = chunk.grads.detach().to("cpu").numpy()
            order.append(indices)
        done = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        # only a split the source covered exactly once is stored (else the pipeline reports the error)
        if entry is not None and len(done) == total and len(np.unique(done)) == total:
            entry.add("order", done)
            entry.add("chunk_sizes", np.array([len(o) for o in order], dtype=np.int64))
            meta = {"split": raw.label, "shape": list(grads.shape), "device": device}
            entry.commit("gradients", raw.key, None, meta)
            entry = None
    finally:
        if entry is not None:
            entry.abort()


def _torch_float32() -> Any:
    import torch

    return torch.float32


def cached_scores(
    query_features: np.ndarray,
    train_features: np.ndarray,
    scorer: Scorer,
    ctx: RunContext,
    cache: StageCache,
    input_keys: list[str],
) -> np.ndarray:
    """(Q, N) float64 scores, keyed by the features' keys (or the dataset's, for featureless scorers)."""
    key = cache.key("scores", scorer, inputs=input_keys)
    q, n = query_features.shape[1], train_features.shape[1]

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        with ctx.progress(f"scores ({type(scorer).__name__})", None):
            scores = scorer.score(query_features, train_features, ctx)
        return {"scores": np.asarray(scores, dtype=np.float64)}, {}

    output = cache.fetch("scores", key, compute, config=scorer.config, expect={"scores": (q, n)})
    return np.asarray(output.arrays["scores"])
