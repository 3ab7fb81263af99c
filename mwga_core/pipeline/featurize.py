"""The features stage, written once: gradients of clips, projected, on an executor, into the cache.

:func:`featurize` is the one featurization path of mwga: the run pipeline (:mod:`mwga_core.pipeline.run`),
``mwga index`` and ``mwga attribute`` all call it, and so does every Ray actor on its chunk. Where the
gradients are computed is an :class:`Executor`'s business:

* :class:`LocalExecutor` runs the gradient source and the projector in this process (replaying cached
  raw gradients when the stage cache holds them, :func:`mwga_core.pipeline.stages.gradient_chunks`;
  with a factorized projector and a source that applies its layer factors,
  :func:`~mwga_core.api.projectors.factorizes`, the source's reduced gradients instead, which are not
  the raw gradients and bypass their cache);
* :class:`mwga_core.pipeline.ray_executor.RayExecutor` hands chunks of clips to Ray actors, each of which
  runs :func:`featurize` with its own :class:`LocalExecutor`.

:func:`mwga_core.pipeline.executors.open_executor` picks one from the run config's ``executor`` field.
:func:`featurize` assembles the executor's chunks in clip order, checks that every clip came exactly
once, and with a :class:`~mwga_core.storage.feature_store.FeatureStore` skips the clips already stored and
stores every finished chunk, so an interrupted run resumes (:func:`featurize_cached` opens that store).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientSource
from mwga_core.api.projectors import Projector, factorizes
from mwga_core.pipeline.stages import RawGradients, gradient_chunks
from mwga_core.storage.feature_store import FeatureStore
from mwga_core.storage.stage_cache import StageCache

#: a chunk of projected features: (n,) positions in the split, and (K, n, P) float32 features
ProjectedChunk = tuple[np.ndarray, np.ndarray]


class Executor(Protocol):
    """Where gradients are computed and projected; see the module docstring."""

    #: the progress bar's label
    label: str
    #: what computes the gradients, for error messages
    source: str

    def project_chunks(
        self, clips: AnalysedClips, todo: np.ndarray, raw: RawGradients | None
    ) -> Iterator[ProjectedChunk]:
        """The projected features of clips ``todo`` of ``clips``, chunk by chunk in any order.

        ``raw`` says where the split's unprojected gradients are cached; an executor may ignore it.

        Shape:
            todo: (m,) int64 ascending positions in ``clips``.
            yields: (n,) int64 positions in ``clips`` and (K, n, P) float32 features.
        """
        ...

    def close(self) -> None:
        """Release what the executor holds (processes, actors); it may be used again after."""
        ...


class LocalExecutor:
    """The gradient source and projector of this process.

    Args:
        gradient: the prepared gradient source.
        projector: the projector.
        ctx: the run context (device, seeds, progress).
    """

    label = "gradients"

    def __init__(self, gradient: GradientSource, projector: Projector, ctx: RunContext) -> None:
        self.gradient, self.projector, self.ctx = gradient, projector, ctx
        self.source = f"gradient source {gradient!r}"

    def project_chunks(
        self, clips: AnalysedClips, todo: np.ndarray, raw: RawGradients | None = None
    ) -> Iterator[ProjectedChunk]:
        """See :meth:`Executor.project_chunks`; the source sees only ``clips.subset(todo)``."""
        pending = clips if len(todo) == len(clips) else clips.subset(todo)
        if factorizes(self.gradient, self.projector):
            chunks = self.gradient.iter_reduced_gradients(pending, self.ctx, self.projector)
        else:
            chunks = gradient_chunks(pending, todo, len(clips), self.gradient, self.ctx, raw)
        for chunk in chunks:
            projected = np.stack(
                [
                    self.projector.project(chunk.grads[k], self.ctx).cpu().numpy()
                    for k in range(chunk.grads.shape[0])
                ]
            )
            yield todo[np.asarray(chunk.indices, dtype=np.int64)], projected

    def close(self) -> None:
        """Nothing to release."""


def featurize(
    clips: AnalysedClips,
    executor: Executor,
    ctx: RunContext,
    store: FeatureStore | None = None,
    raw: RawGradients | None = None,
) -> np.ndarray:
    """Gradients of every clip, projected. Returns (K, N, P) float32 in clip order.

    With a ``store``, clips it already holds are skipped (the executor sees only the positions still
    missing) and every finished chunk is written to it, so an interrupted run resumes from there.
    With ``raw``, unprojected gradients come from (or go to) the stage cache, so that another
    projection of the same gradients skips the gradient source (local executor only).
    """
    todo = np.arange(len(clips), dtype=np.int64) if store is None else store.missing()
    parts: dict[int, np.ndarray] = {}
    with ctx.progress(executor.label, len(todo)) as bar:
        for indices, projected in executor.project_chunks(clips, todo, raw) if len(todo) else ():
            projected = np.asarray(projected, dtype=np.float32)
            if projected.ndim != 3 or projected.shape[1] != len(indices):
                raise RuntimeError(
                    f"{executor.source} gave features of shape {projected.shape} for {len(indices)} clips"
                )
            for column, index in enumerate(indices):
                if int(index) in parts:
                    raise RuntimeError(f"{executor.source} yielded clip {index} twice")
                parts[int(index)] = projected[:, column]
            if store is not None:
                store.write(indices, projected)
            bar.advance(len(indices))
    missing = sorted(set(todo.tolist()) - set(parts))
    if missing:
        raise RuntimeError(f"{executor.source} yielded no gradient for clips {missing[:5]}")
    if store is not None:
        return store.read()
    return np.stack([parts[i] for i in range(len(clips))], axis=1).astype(np.float32)


def featurize_cached(
    clips: AnalysedClips,
    executor: Executor,
    ctx: RunContext,
    cache: StageCache,
    key: str,
    projector: Projector,
    raw: RawGradients | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`featurize` through the split's resumable features entry (stage ``features``, ``key``).

    Holds the entry's lock while computing, so concurrent runs of one config compute it once.
    Returns the (K, N, P) float32 features and how many clips were read from the entry.
    """
    with FeatureStore.open(cache, key, len(clips), projector.config) as store:
        stored = int(store.done.sum())
        return featurize(clips, executor, ctx, store, raw), stored
