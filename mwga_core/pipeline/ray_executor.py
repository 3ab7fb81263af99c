"""Featurization fanned out over a Ray cluster (``executor=ray``).

The single-process path (:func:`mwga_core.pipeline.run.featurize`) runs the gradient source and projector
over every clip in one process. With ``executor=ray`` the clips still to featurize are cut into chunks of
at most ``ray_chunk_clips`` and handed to ``ray_num_workers`` Ray actors. Each actor rebuilds the gradient
source, projector and model from the run's config (a plain container; the plugins load from the worker's
own installation through :func:`mwga_core.plugin_host.host.get_host`), calls ``prepare`` on the training
clips once, then runs the very same :func:`~mwga_core.pipeline.run.featurize` on each chunk it receives. The
driver writes every finished chunk to the feature store (so a killed run resumes) and assembles the
features in clip order. :class:`RayFeaturizer` keeps the actors for several calls (``mwga index``
featurizes batch after batch); :func:`featurize_on_ray` is one call of it.

Identical results: every built-in gradient source computes each clip's gradient from that clip alone
(its frames, flow, descriptor, id-derived seed) and the projectors are pure functions of (seed, D, P)
that accumulate in float64 on the CPU, so a clip's features do not depend on which chunk or process it
was in. A gradient source that batches clips through float32 kernels whose rounding depends on the batch
(``gradient=diffusion``: vmap over a chunk of clips) can differ in the last float32 bits between chunkings,
exactly as it already can between a fresh run and one resumed from the feature store.

Model-based sources (``gradient=diffusion``) train in the driver before featurization and cache the
model in ``cache.dir``; workers load it from there, so on a multi-node cluster ``cache.dir`` must be a
shared filesystem. Each worker reports its ``checkpoint_id``, and a worker whose model differs from the
driver's is refused. See docs/distributed.md.

ray is imported inside functions: it is an optional extra (``pip install 'mwga[ray]'``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError
from mwga_core.config.schema import group_configs
from mwga_core.storage.feature_store import FeatureStore

EXECUTORS = ("local", "ray")
#: config groups a worker needs to rebuild the featurization components
WORKER_GROUPS = ("gradient", "projection", "model")
#: chunks queued per worker, so a worker never waits for the driver between chunks
CHUNKS_IN_FLIGHT_PER_WORKER = 2


@dataclass
class RaySettings:
    """The run config's executor fields (see :class:`mwga_core.config.schema.MwgaConfig`)."""

    executor: str = "local"
    address: str = ""
    num_workers: int = 0
    chunk_clips: int = 256

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RaySettings:
        """Read and validate the fields; an unknown executor or a bad number raises ConfigValueError."""
        settings = cls(
            executor=str(cfg.get("executor", "local")),
            address=str(cfg.get("ray_address", "") or ""),
            num_workers=int(cfg.get("ray_num_workers", 0)),
            chunk_clips=int(cfg.get("ray_chunk_clips", 256)),
        )
        if settings.executor not in EXECUTORS:
            raise ConfigValueError("executor", settings.executor, f"one of {list(EXECUTORS)}")
        if settings.num_workers < 0:
            raise ConfigValueError(
                "ray_num_workers", settings.num_workers, "an integer >= 0 (0 = one per cluster CPU)"
            )
        if settings.chunk_clips < 1:
            raise ConfigValueError("ray_chunk_clips", settings.chunk_clips, "an integer >= 1")
        if settings.executor == "ray":
            require_ray()
        return settings


def require_ray():
    """The ``ray`` module, or a user error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MwgaUserError(
            "executor=ray needs Ray, which is not installed: pip install 'mwga[ray]' (or pip install "
            "'ray>=2.9'), or run with executor=local"
        ) from None
    return ray


def connect(settings: RaySettings):
    """Join the cluster at ``ray_address``, or start a local one; a running session is reused."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as error:
            raise MwgaUserError(
                f"cannot connect to the Ray cluster at ray_address={settings.address!r}: {error}. "
                "Start one with `ray start --head` (docs/distributed.md) or leave ray_address empty "
                "for a local cluster."
            ) from None
    else:
        ray.init(num_cpus=settings.num_workers or None, include_dashboard=False, log_to_driver=False)
    return ray


class FeaturizeWorker:
    """A Ray actor's state: the run's gradient source and projector, prepared once.

    Args:
        groups: plain containers of the run config's ``gradient``, ``projection`` and ``model`` groups.
        run: ``seed``, ``device``, ``cache_dir``, ``output_dir`` of the driver's :class:`RunContext`.
        train: the training clips, for the gradient source's ``prepare``; None skips ``prepare``.
    """

    def __init__(self, groups: dict[str, Any], run: dict[str, Any], train: AnalysedClips | None) -> None:
        from mwga_core.pipeline.run import Components
        from mwga_core.plugin_host.host import get_host

        host = get_host()
        cfg = OmegaConf.create(groups)
        gradient = host.build("gradient", cfg.gradient)
        if gradient.uses_model:
            gradient.bind_model(host.build("model", cfg.model))
        projector = host.build("projection", cfg.projection)
        self.components = Components(
            dataset=None, motion=None, descriptor=None, gradient=gradient, projector=projector, scorer=None
        )
        self.ctx = RunContext(
            seed=int(run["seed"]),
            device=str(run["device"]),
            cache_dir=Path(run["cache_dir"]),
            output_dir=Path(run["output_dir"]),
            show_progress=False,
        )
        if train is not None:
            gradient.prepare(train, self.ctx)

    def checkpoint_id(self) -> str | None:
        return self.components.gradient.checkpoint_id()

    def featurize(self, clips: AnalysedClips) -> np.ndarray:
        """The single-process featurization of one chunk. Shape: returns (K, n, P) float32."""
        from mwga_core.pipeline.run import featurize

        return featurize(clips, self.components, self.ctx)


def featurize_on_ray(
    clips: AnalysedClips,
    train: AnalysedClips,
    cfg: DictConfig,
    ctx: RunContext,
    checkpoint_id: str | None = None,
    store: FeatureStore | None = None,
) -> np.ndarray:
    """:func:`mwga_core.pipeline.run.featurize` with the chunks computed by Ray actors.

    Args:
        clips: the split to featurize.
        train: the training clips (each worker's gradient source ``prepare`` sees them).
        cfg: the composed run config (executor fields and the worker groups are read from it).
        checkpoint_id: the driver's ``gradient.checkpoint_id()``; every worker must report the same.
        store: as in :func:`~mwga_core.pipeline.run.featurize`: stored clips are skipped, finished chunks written.

    Shape:
        returns: (K, N, P) float32, clips in their order in ``clips``.
    """
    with RayFeaturizer(cfg, ctx, train, checkpoint_id) as featurizer:
        return featurizer.featurize(clips, store)


class RayFeaturizer:
    """Ray actors that featurize chunks of clips, started on the first call and kept for later calls
    (``mwga index`` featurizes batch after batch); use as a context manager, which kills the actors.

    Args:
        cfg, ctx, checkpoint_id: as in :func:`featurize_on_ray` (the settings are validated here).
        train: the clips each actor's gradient source ``prepare`` sees, or None to skip ``prepare``
            (only for sources whose ``prepare`` does nothing).
    """

    def __init__(
        self,
        cfg: DictConfig,
        ctx: RunContext,
        train: AnalysedClips | None,
        checkpoint_id: str | None = None,
    ) -> None:
        self.settings = RaySettings.from_config(cfg)
        self.cfg, self.ctx, self.train, self.checkpoint_id = cfg, ctx, train, checkpoint_id
        self.ray: Any = None
        self.workers: list[Any] = []
        self.workers_wanted = 0

    def __enter__(self) -> RayFeaturizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the actors (a later :meth:`featurize` starts new ones)."""
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []

    def featurize(self, clips: AnalysedClips, store: FeatureStore | None = None) -> np.ndarray:
        """Featurize ``clips`` over the actors (see :func:`featurize_on_ray`).

        Shape:
            returns: (K, N, P) float32, clips in their order in ``clips``.
        """
        todo = np.arange(len(clips), dtype=np.int64) if store is None else store.missing()
        if len(todo) == 0:
            if store is None:
                raise DataError("there are no clips to featurize")
            return store.read()
        if self.ray is None:
            self.ray = connect(self.settings)
            self.workers_wanted = self.settings.num_workers or max(
                1, int(self.ray.cluster_resources().get("CPU", 1))
            )
        ray = self.ray
        chunk_clips = max(1, min(self.settings.chunk_clips, math.ceil(len(todo) / self.workers_wanted)))
        chunks = [todo[start : start + chunk_clips] for start in range(0, len(todo), chunk_clips)]
        if len(self.workers) < min(self.workers_wanted, len(chunks)):
            self.workers += _start_workers(
                ray,
                self.cfg,
                self.ctx,
                self.train,
                min(self.workers_wanted, len(chunks)) - len(self.workers),
                self.checkpoint_id,
            )
        features: np.ndarray | None = None
        queue = list(reversed(range(len(chunks))))
        in_flight: dict[Any, tuple[Any, int]] = {}

        def submit(worker) -> None:
            if queue:
                number = queue.pop()
                in_flight[worker.featurize.remote(clips.subset(chunks[number]))] = (worker, number)

        try:
            for worker in self.workers:
                for _ in range(CHUNKS_IN_FLIGHT_PER_WORKER):
                    submit(worker)
            with self.ctx.progress("gradients (ray)", len(todo)) as bar:
                while in_flight:
                    (ready,), _ = ray.wait(list(in_flight), num_returns=1)
                    worker, number = in_flight.pop(ready)
                    projected = np.asarray(ray.get(ready), dtype=np.float32)  # (K, n, P)
                    indices = chunks[number]
                    if projected.ndim != 3 or projected.shape[1] != len(indices):
                        raise RuntimeError(
                            f"a Ray worker returned features of shape {projected.shape} for "
                            f"{len(indices)} clips"
                        )
                    if features is None:
                        features = np.zeros((projected.shape[0], len(clips), projected.shape[2]), np.float32)
                    features[:, indices] = projected
                    if store is not None:
                        store.write(indices, projected)
                    bar.advance(len(indices))
                    submit(worker)
        except BaseException:  # a failed chunk: do not leave the actors busy with the others
            self.close()
            raise
        return store.read() if store is not None else features


def _start_workers(
    ray, cfg: DictConfig, ctx: RunContext, train: AnalysedClips | None, count: int, checkpoint_id
) -> list[Any]:
    groups = group_configs(cfg, WORKER_GROUPS)
    run = {
        "seed": int(ctx.seed),
        "device": str(ctx.device),
        "cache_dir": str(ctx.cache_dir),
        "output_dir": str(ctx.output_dir),
    }
    actor = ray.remote(num_cpus=1)(FeaturizeWorker)
    train_ref = ray.put(train)
    workers = [actor.remote(groups, run, train_ref) for _ in range(count)]
    try:
        reported = ray.get([worker.checkpoint_id.remote() for worker in workers])
    except BaseException:  # a worker failed to build or prepare: do not leave the others running
        for worker in workers:
            ray.kill(worker)
        raise
    if any(found != checkpoint_id for found in reported):
        for worker in workers:
            ray.kill(worker)
        raise RuntimeError(
            f"Ray workers loaded model checkpoints {sorted(set(map(str, reported)))} but the driver uses "
            f"{checkpoint_id!r}: on a multi-node cluster cache.dir must be a shared filesystem "
            "(docs/distributed.md)"
        )
    return workers
