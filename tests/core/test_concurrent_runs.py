"""Runs sharing one cache at the same time: the features entry is computed once, results never change."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_feature_store import CountingConfig, CountingGradient, make_clips, projector_named

from mwga_core.api.context import RunContext
from mwga_core.pipeline.featurize import LocalExecutor, featurize_cached
from mwga_core.storage.stage_cache import StageCache

MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)
SMALL_RUN = ("method=ours_simulated", "dataset.num_clips=60", "dataset.queries_per_pattern=1")
ROUNDS = 4


class SlowCountingGradient(CountingGradient):
    """The counting source, slowed down so that a second process arrives while the first computes."""

    def iter_gradients(self, clips, ctx):
        for chunk in super().iter_gradients(clips, ctx):
            time.sleep(0.2)
            yield chunk


def fill_features_entry(root: str, barrier, results) -> None:
    ctx = RunContext(seed=0, device="cpu", cache_dir=Path(root), output_dir=Path(root), show_progress=False)
    cache = StageCache(Path(root))
    gradient = SlowCountingGradient(CountingConfig(chunk=2))
    projector = projector_named("sparse_jl")
    barrier.wait()
    features, stored = featurize_cached(
        make_clips(10), LocalExecutor(gradient, projector, ctx), ctx, cache, "shared", projector
    )
    results.put((len(gradient.computed), stored, features.tobytes()))


def test_two_processes_filling_one_features_entry_compute_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=fill_features_entry, args=(str(tmp_path), barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    # one computed every clip under the lock; the other waited for it and read the finished entry
    assert sorted((computed, stored) for computed, stored, _ in outcomes) == [(0, 10), (10, 0)]
    assert outcomes[0][2] == outcomes[1][2]
    entries = sorted(p.name for p in (tmp_path / "stages" / "features").iterdir())
    assert entries == [".shared.lock", "shared"]  # no partial or temporary folder left
    np.testing.assert_array_equal(
        np.frombuffer(outcomes[0][2], dtype=np.float32).reshape(2, 10, 16),
        np.load(tmp_path / "stages" / "features" / "shared" / "features.npy"),
    )


def start_run(cache: Path, run_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cache)
    return subprocess.Popen(
        [MWGA, *SMALL_RUN, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_two_runs_started_together_on_an_empty_cache_match_a_sequential_run(tmp_path: Path) -> None:
    """The race of issue 3/14: two `mwga` runs on one empty cache, both exiting 0 with all-zero scores."""
    finish(start_run(tmp_path / "reference-cache", tmp_path / "reference"))
    expected = (tmp_path / "reference" / "results.json").read_bytes()
    for round_number in range(ROUNDS):
        cache = tmp_path / f"cache-{round_number}"
        runs = [tmp_path / f"round-{round_number}-{which}" for which in "ab"]
        processes = [start_run(cache, run_dir) for run_dir in runs]
        for process in processes:
            finish(process)
        for run_dir in runs:
            assert (run_dir / "results.json").read_bytes() == expected, f"round {round_number}: {run_dir}"
        # and a later run reads the same (not a wrong entry one of them cached)
        again = tmp_path / f"round-{round_number}-again"
        finish(start_run(cache, again))
        assert (again / "results.json").read_bytes() == expected
        leftovers = [p for p in (cache / "stages").glob("*/.*") if not p.name.endswith(".lock")]
        assert leftovers == [], leftovers
