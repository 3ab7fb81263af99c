"""The benches run end to end on tiny inputs and print the JSON they document (their timings are never
asserted: they depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def run_bench(name: str, *args: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    done = subprocess.run(
        [sys.executable, str(BENCHES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_retrieval_bench_runs_the_default_methods_attribute_path(tmp_path: Path) -> None:
    report = run_bench(
        "retrieval.py", "--clips", "3000", "--dim", "16", "--queries", "4", "--warmup", "1", "--repeats", "1",
        "--kinds", "flat,flat_fp16,ours", "--clusters", "30", "--check-rows", "20",
        "--store-dir", str(tmp_path / "scoring"), cwd=tmp_path,
    )  # fmt: skip
    ours = report["kinds"]["ours"]
    assert ours["scorer"]["neighbours"] == 5  # the default method's scorer
    assert ours["augmented_rows_exact"] == 1.0 and ours["recall_at_20"] == 1.0
    assert ours["search_index_kind"] == "flat_fp16" and ours["single_query_ms"] > 0
    assert {"augment_seconds", "search_index_seconds", "store_seconds", "load_seconds"} <= set(ours)
    assert report["kinds"]["flat_fp16"]["recall_at_20"] == 1.0
    assert (tmp_path / "scoring" / "scoring" / "scoring.json").is_file()


def test_startup_bench_prints_both_sides_and_their_ratio(tmp_path: Path) -> None:
    report = run_bench("startup.py", "--runs", "1", "--skip-run", cwd=tmp_path)
    assert report["help_seconds"] > 0 and report["import_hydra_seconds"] > 0
    ratio = report["help_seconds"] / report["import_hydra_seconds"]
    assert abs(report["help_over_import_hydra"] - ratio) < 0.01 * ratio + 0.01
    assert report["plugins_seconds"] > 0 and "cached_run_seconds" not in report


def test_opposite_direction_probe_reports_each_removal_kind(tmp_path: Path) -> None:
    report = run_bench(
        "opposite_direction.py", "--k", "2", "dataset.num_clips=48", "model.training.steps=4",
        "model.training.checkpoints=[]", "counterfactual.timesteps=[50]", f"cache.dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert report["k"] == 2 and report["queries"] == 25  # 5 queries of each of the 5 directional classes
    kinds = {"same_sense", "opposite_sense", "other_class", "control"}
    assert set(report["mean_delta"]) == kinds and set(report["sem_delta"]) == kinds
    for by_output in report["mean_delta"].values():
        assert set(by_output) == {"loss", "motion"} and all(np.isfinite(v) for v in by_output.values())
    assert set(report["per_class"]) == {
        "horizontal_pan",
        "vertical_tilt",
        "diagonal_slide",
        "rotation_cw",
        "zoom_in",
    }
    assert report["per_class"]["rotation_cw"]["dominant_summary"] == "curl"
    assert report["per_class"]["zoom_in"]["dominant_summary"] == "divergence"
    # the full model, two senses of five classes and one control: all trained here, none twice
    assert report["models"]["trained"] == 12 and report["models"]["cached"] == 0
