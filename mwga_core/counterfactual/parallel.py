"""Train the counterfactual protocols' subset models in parallel worker processes.

Both protocols need many models, each trained on part of the training clips, and the model stage trains
them one after another. With ``counterfactual.workers`` = W > 1, every model the run will need (the LDS
subsets, the full model, the retrain-without-top-k removals) is first trained by a pool of W processes
(``spawn``: a fresh interpreter, torch limited to cores / W threads each) through the same model stage,
which writes each model to the model store under its entry lock. The protocols then read them from the
store, so their results are computed exactly as in a sequential run. A model already in the store is
read, not trained.

One caveat: a model trained with fewer torch threads may differ from a sequential run's in the last bits
(the order of floating-point sums follows the thread count); either is a valid model of that subset and
the store keeps whichever was trained first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.models import ModelAdapter


@dataclass(frozen=True)
class SubsetJob:
    """One model to have in the store: the adapter, its clips and where the run keeps models."""

    adapter: ModelAdapter
    clips: ClipSet
    num_classes: int
    seed: int
    device: str
    cache_dir: Path
    threads: int


def train_subset_model(job: SubsetJob) -> tuple[bool, float]:
    """In a worker: the model of ``job`` through the model stage. Returns (was it cached, seconds)."""
    import torch
    from rich.console import Console

    from mwga_core.api.context import RunContext
    from mwga_core.pipeline.model_stage import load_or_train_model

    torch.set_num_threads(job.threads)
    ctx = RunContext(
        seed=job.seed, device=job.device, cache_dir=job.cache_dir, console=Console(stderr=True, quiet=True)
    )
    start = time.perf_counter()
    model = load_or_train_model(job.adapter, job.clips, ctx, job.num_classes)
    return model.loaded_from_cache, time.perf_counter() - start


def pretrain_in_parallel(
    adapter: ModelAdapter,
    train: ClipSet,
    keeps: Sequence[np.ndarray],
    num_classes: int,
    ctx,
    workers: int,
) -> dict[str, float]:
    """Have the model of every ``keeps`` subset (indices into ``train``) in the store, W at a time.

    Returns ``{"trained", "cached", "seconds"}``: models trained / found in the store by the workers, and
    the wall time of the whole pool.
    """
    unique: dict[tuple[int, ...], np.ndarray] = {}
    for keep in keeps:
        unique.setdefault(tuple(int(i) for i in keep), np.asarray(keep, dtype=np.int64))
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [
        SubsetJob(
            adapter, train.subset(keep), num_classes, ctx.seed, ctx.device, Path(ctx.cache_dir), threads
        )
        for keep in unique.values()
    ]
    counts = {"trained": 0, "cached": 0, "seconds": 0.0}
    start = time.perf_counter()
    with (
        ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool,
        ctx.progress(f"subset models ({workers} workers)", len(jobs)) as progress,
    ):
        for future in as_completed([pool.submit(train_subset_model, job) for job in jobs]):
            cached, _ = future.result()
            counts["cached" if cached else "trained"] += 1
            progress.advance(1)
    counts["seconds"] = round(time.perf_counter() - start, 3)
    return counts
