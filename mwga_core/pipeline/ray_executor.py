"""The Ray executor (``executor=ray``): featurization fanned out over a Ray cluster.

The local executor (:class:`mwga_core.pipeline.featurize.LocalExecutor`) runs the gradient source and
projector over every clip in one process. :class:`RayExecutor` cuts the clips still to featurize into
chunks of at most ``ray_chunk_clips`` and hands them to ``ray_num_workers`` Ray actors. Each actor
(:class:`FeaturizeWorker`) rebuilds the gradient source, projector and model from the run's config (a
plain container; the plugins load from the worker's own installation through
:func:`mwga_core.plugin_host.host.get_host`), prepares it on the training clips once (a model source
gets its model from the model stage, which reads what the driver trained), then runs the
very same :func:`~mwga_core.pipeline.featurize.featurize` with a local executor on each chunk it
receives. The driver's :func:`~mwga_core.pipeline.featurize.featurize` writes every finished chunk to the
features entry (so a killed run resumes) and assembles the features in clip order. The actors start on
the first chunk and are kept until :meth:`RayExecutor.close` (``mwga index`` featurizes batch after batch).

Identical results: every built-in gradient source computes each clip's gradient from that clip alone
(its frames, flow, descriptor, id-derived seed) and the projectors are pure functions of (seed, D, P)
that accumulate in float64 on the CPU, so a clip's features do not depend on which chunk or process it
was in. A gradient source that batches clips through float32 kernels whose rounding depends on the batch
(``gradient=diffusion``: vmap over a chunk of clips) can differ in the last float32 bits between chunkings,
exactly as it already can between a fresh run and one resumed from the features entry.

Model-based sources (``gradient=diffusion``): the driver's ``model`` stage trains the model before
featurization and keeps it in the model store under ``cache.dir``; workers load it from there, so on a multi-node cluster ``cache.dir`` must be a
shared filesystem. Each worker reports its ``checkpoint_id``, and a worker whose model differs from the
driver's is refused. See docs/distributed.md.

ray is imported inside functions: it is an optional extra (``pip install 'mwga[ray]'``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.errors import MwgaUserError
from mwga_core.config.schema import group_configs
from mwga_core.pipeline.featurize import LocalExecutor, ProjectedChunk, featurize
from mwga_core.pipeline.stages import RawGradients

#: config groups a worker needs to rebuild the featurization components
WORKER_GROUPS = ("gradient", "projection", "model")
#: chunks queued per worker, so a worker never waits for the driver between chunks
CHUNKS_IN_FLIGHT_PER_WORKER = 2


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


def connect(address: str, num_workers: int):
    """Join the cluster at ``address`` (``ray_address``), or start a local one; a running session is reused."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as error:
            raise MwgaUserError(
                f"cannot connect to the Ray cluster at ray_address={address!r}: {error}. "
                "Start one with `ray start --head` (docs/distributed.md) or leave ray_address empty "
                "for a local cluster."
            ) from None
    else:
        ray.init(num_cpus=num_workers or None, include_dashboard=False, log_to_driver=False)
    return ray


class FeaturizeWorker:
    """A Ray actor's state: the run's gradient source and projector, prepared once.

    Args:
        groups: plain containers of the run config's ``gradient``, ``projection`` and ``model`` groups.
        run: ``seed``, ``device``, ``cache_dir``, ``output_dir`` of the driver's :class:`RunContext`.
        train: the training clips, for the gradient source's ``prepare``; None skips ``prepare``.
    """

    def __init__(self, groups: dict[str, Any], run: dict[str, Any], train: AnalysedClips | None) -> None:
        from mwga_core.pipeline.model_stage import prepare_gradient_source
        from mwga_core.plugin_host.host import get_host

        host = get_host()
        cfg = OmegaConf.create(groups)
        gradient = host.build("gradient", cfg.gradient)
        model = host.build("model", cfg.model) if gradient.uses_model else None
        projector = host.build("projection", cfg.projection)
        self.ctx = RunContext(
            seed=int(run["seed"]),
            device=str(run["device"]),
            cache_dir=Path(run["cache_dir"]),
            output_dir=Path(run["output_dir"]),
            show_progress=False,
        )
        if train is not None:
            # the model comes from the model store, where the driver's model stage left it
            prepare_gradient_source(gradient, model, train, self.ctx)
        self.executor = LocalExecutor(gradient, projector, self.ctx)

    def checkpoint_id(self) -> str | None:
        return self.executor.gradient.checkpoint_id()

    def featurize(self, clips: AnalysedClips) -> np.ndarray:
        """The single-process featurization of one chunk. Shape: returns (K, n, P) float32."""
        return featurize(clips, self.executor, self.ctx)


class RayExecutor:
    """Ray actors that featurize chunks of clips (see the module docstring).

    Args:
        cfg: the run config: ``ray_address``, ``ray_num_workers``, ``ray_chunk_clips`` and the
            :data:`WORKER_GROUPS` are read from it (validated by
            :func:`mwga_core.pipeline.executors.check_executor`).
        ctx: the driver's run context.
        train: the clips each actor's gradient source ``prepare`` sees, or None to skip ``prepare``
            (only for sources whose ``prepare`` does nothing).
        checkpoint_id: the driver's ``gradient.checkpoint_id()``; every worker must report the same.
    """

    label = "gradients (ray)"

    def __init__(
        self, cfg: DictConfig, ctx: RunContext, train: AnalysedClips | None, checkpoint_id: str | None = None
    ) -> None:
        self.cfg, self.ctx, self.train, self.checkpoint_id = cfg, ctx, train, checkpoint_id
        self.source = f"Ray workers of gradient source {cfg.gradient.name!r}"
        self.ray: Any = None
        self.workers: list[Any] = []
        self.workers_wanted = 0

    def close(self) -> None:
        """Kill the actors (a later call starts new ones)."""
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []

    def project_chunks(
        self, clips: AnalysedClips, todo: np.ndarray, raw: RawGradients | None = None
    ) -> Iterator[ProjectedChunk]:
        """See :meth:`mwga_core.pipeline.featurize.Executor.project_chunks`; ``raw`` is not used (the
        workers' gradients stay in the workers)."""
        if self.ray is None:
            self.ray = connect(str(self.cfg.ray_address or ""), int(self.cfg.ray_num_workers))
            self.workers_wanted = int(self.cfg.ray_num_workers) or max(
                1, int(self.ray.cluster_resources().get("CPU", 1))
            )
        ray = self.ray
        chunk_clips = max(1, min(int(self.cfg.ray_chunk_clips), math.ceil(len(todo) / self.workers_wanted)))
        chunks = [todo[start : start + chunk_clips] for start in range(0, len(todo), chunk_clips)]
        wanted = min(self.workers_wanted, len(chunks))
        if len(self.workers) < wanted:
            self.workers += _start_workers(
                ray, self.cfg, self.ctx, self.train, wanted - len(self.workers), self.checkpoint_id
            )
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
            while in_flight:
                (ready,), _ = ray.wait(list(in_flight), num_returns=1)
                worker, number = in_flight.pop(ready)
                projected = ray.get(ready)  # (K, n, P)
                submit(worker)
                yield chunks[number], projected
        except BaseException:  # a failed chunk: do not leave the actors busy with the others
            self.close()
            raise


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
