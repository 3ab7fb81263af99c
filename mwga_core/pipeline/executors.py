"""Choosing the executor of featurization from the run config's ``executor`` field, once.

``executor=local`` (:class:`mwga_core.pipeline.featurize.LocalExecutor`) computes in this process;
``executor=ray`` (:class:`mwga_core.pipeline.ray_executor.RayExecutor`) on Ray actors. Both give the same
features; see :mod:`mwga_core.pipeline.featurize` for the protocol and docs/distributed.md for Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.gradients import GradientSource
from mwga_core.api.projectors import Projector
from mwga_core.pipeline.featurize import Executor, LocalExecutor
from mwga_core.pipeline.ray_executor import RayExecutor, require_ray

EXECUTORS = ("local", "ray")


def check_executor(cfg: Any) -> None:
    """Validate the executor fields of the run config; a bad value raises ConfigValueError.

    With ``executor=ray`` a missing Ray installation is a user error here, before any work.
    """
    if cfg.executor not in EXECUTORS:
        raise ConfigValueError("executor", cfg.executor, f"one of {list(EXECUTORS)}")
    if cfg.ray_num_workers < 0:
        raise ConfigValueError(
            "ray_num_workers", cfg.ray_num_workers, "an integer >= 0 (0 = one per cluster CPU)"
        )
    if cfg.ray_chunk_clips < 1:
        raise ConfigValueError("ray_chunk_clips", cfg.ray_chunk_clips, "an integer >= 1")
    if cfg.executor == "ray":
        require_ray()


@contextmanager
def open_executor(
    cfg: Any,
    ctx: RunContext,
    gradient: GradientSource,
    projector: Projector,
    train: AnalysedClips | None,
    checkpoint_id: str | None,
) -> Iterator[Executor]:
    """The executor ``cfg.executor`` names, closed when the block ends.

    Args:
        cfg: the run config (its ``executor`` and ``ray_*`` fields, and for Ray the component groups
            the workers rebuild).
        ctx: the run context.
        gradient, projector: the driver's prepared components (the local executor runs them).
        train: the clips the gradient source was prepared on (Ray workers prepare on them too), or None
            when its ``prepare`` does nothing.
        checkpoint_id: the driver's ``gradient.checkpoint_id()`` (Ray workers must report the same).
    """
    check_executor(cfg)
    if cfg.executor == "ray":
        executor: Executor = RayExecutor(cfg, ctx, train, checkpoint_id)
    else:
        executor = LocalExecutor(gradient, projector, ctx)
    try:
        yield executor
    finally:
        executor.close()
