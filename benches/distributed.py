"""Featurization time: single process (executor=local) vs Ray actors (executor=ray) on one machine.

Prints one JSON document: for the default corpus (or ``--override`` changes), the seconds of the run's
``gradients + projection`` stage with each executor (the Ray figure includes starting the actors, each of
which imports mwga and torch and prepares the gradient source; ``ray_init_seconds`` is the cluster start
alone), and whether the features are identical. A warm-up local run first fills the model cache, so
neither timing includes training a model (``gradient=diffusion``).

Usage::

    python benches/distributed.py [--workers 2] [--override gradient=diffusion --override ...]

Ray's files go to a temp folder and token auth is disabled (RAY_AUTH_MODE) so nothing lands in the home
folder. Timings depend on the machine's load; run it twice and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from mwga_core.config.schema import register_configs
    from mwga_core.plugin_host.host import get_host

    register_configs(get_host())
    with initialize_config_module("mwga_conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def featurize_seconds(overrides: list[str], cache: Path):
    from mwga_core.api.context import RunContext
    from mwga_core.pipeline.run import run_attribution

    ctx = RunContext(seed=0, cache_dir=cache, output_dir=cache / "output")
    start = time.perf_counter()
    result = run_attribution(compose(overrides), ctx)
    total = time.perf_counter() - start
    stage = next(info for info in ctx.stage_log if info["stage"] == "gradients + projection")
    return stage["seconds"], round(total, 2), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--override", action="append", default=[], help="a Hydra override, repeatable")
    args = parser.parse_args()
    base = [*args.override, "feature_store=false"]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="mwga-bench-", dir="/tmp"))
    try:
        featurize_seconds(base, work / "cache")  # warm-up: imports, model training into the cache
        local_stage, local_total, local = featurize_seconds(base, work / "cache")
        import ray

        start = time.perf_counter()
        ray.init(
            num_cpus=args.workers, include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray")
        )
        init_seconds = time.perf_counter() - start
        ray_args = [*base, "executor=ray", f"ray_num_workers={args.workers}"]
        ray_runs = [featurize_seconds(ray_args, work / "cache") for _ in range(2)]
        ray.shutdown()
        distributed = ray_runs[-1][2]
        report = {
            "overrides": args.override,
            "train_clips": int(local.train_features.shape[1]),
            "query_clips": int(local.query_features.shape[1]),
            "feature_shape": list(local.train_features.shape),
            "workers": args.workers,
            "local_featurize_seconds": local_stage,
            "ray_featurize_seconds": [run[0] for run in ray_runs],
            "ray_init_seconds": round(init_seconds, 2),
            "local_run_seconds": local_total,
            "ray_run_seconds": [run[1] for run in ray_runs],
            "features_identical": bool(
                np.array_equal(distributed.train_features, local.train_features)
                and np.array_equal(distributed.query_features, local.query_features)
            ),
            "max_abs_feature_difference": float(
                np.abs(distributed.train_features - local.train_features).max()
            ),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
