"""`mwga method=ours projection=kronecker` end to end, on a model trained in a few steps: the run
completes, the batched engine's factorized features give the same scores as the vmap engine's
materialised-then-projected ones, and no raw gradients are cached (reduced gradients are not raw)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import mwga, ok

#: the default method on a tiny corpus and model (see TINY_MODEL in tests/test_damaged_cache.py)
TINY_OURS = [
    "method=ours",
    "projection=kronecker",
    "projection.dim=64",
    "dataset.num_clips=24",
    "dataset.num_frames=5",
    "dataset.size=16",
    "model.channels=8",
    "model.blocks=1",
    "model.diffusion_steps=100",
    "model.training.steps=4",
    "model.training.checkpoints=[]",
    "gradient.timesteps=[30]",
]


def scores(out: Path) -> dict[tuple[str, str], float]:
    with open(out / "rankings.csv", newline="") as handle:
        return {(row["query_id"], row["clip_id"]): float(row["score"]) for row in csv.DictReader(handle)}


@pytest.mark.slow  # two runs of the real pipeline in subprocesses
def test_the_default_method_runs_with_the_kronecker_projection(tmp_path: Path) -> None:
    batched = ok(mwga(*TINY_OURS, f"hydra.run.dir={tmp_path / 'batched'}", cwd=tmp_path))
    assert "NDCG@20" in batched.stdout
    results = json.loads((tmp_path / "batched" / "results.json").read_text())
    assert results["config"]["projection"]["name"] == "kronecker"
    assert np.isfinite(results["metrics"]["mean"]["NDCG@20"])
    ok(mwga(*TINY_OURS, "gradient.engine=vmap", f"hydra.run.dir={tmp_path / 'vmap'}", cwd=tmp_path))
    fast, reference = scores(tmp_path / "batched"), scores(tmp_path / "vmap")
    assert fast.keys() == reference.keys()
    np.testing.assert_allclose(list(fast.values()), [reference[k] for k in fast], rtol=1e-4, atol=1e-5)
    stages = tmp_path / "cache" / "stages"
    assert (stages / "features").is_dir() and not (stages / "gradients").exists()
