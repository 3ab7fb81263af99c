"""`mwga counterfactual` end to end with tiny settings: the JSON's structure and the cached subset models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)
TINY = [
    "dataset.num_clips=24",
    "counterfactual.subsets=3",
    "model.training.steps=10",
    "model.training.checkpoints=[]",
    "counterfactual.methods=[ours_simulated,random]",
    "counterfactual.k=[3]",
    "counterfactual.retrain_queries=1",
    "counterfactual.bootstrap=50",
]


def counterfactual(out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    # the timeout only stops a hung process: never tight, a loaded machine is many times slower
    return subprocess.run(
        [MWGA, "counterfactual", "--output-dir", str(out), *TINY, *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip


def test_counterfactual_writes_lds_and_retrain_tables_and_reuses_models(tmp_path: Path) -> None:
    first = counterfactual(tmp_path / "one", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    document = json.loads((tmp_path / "one" / "counterfactual.json").read_text())
    queries = document["queries"]
    assert len(queries) == 6 and document["num_train"] == 24
    assert len(document["subsets"]) == 3 and all(len(s) == 12 for s in document["subsets"])
    for name in ("loss", "motion"):  # each subset model's outputs on each query
        assert np.asarray(document["subset_outputs"][name]).shape == (3, 6)
    assert set(document["lds"]) == {"ours_simulated", "random"}
    for by_output in document["lds"].values():
        assert set(by_output) == {"loss", "motion"}
        for value in by_output.values():
            assert value["low"] <= value["mean"] <= value["high"]
            assert len(value["per_query"]) == 6 and all(-1 <= v <= 1 for v in value["per_query"])
    removals = {row["removal"] for row in document["retrain"]["rows"]}
    assert {"ours_simulated", "random", "k random clips", "k random clips of the class"} == removals
    assert all(row["k"] == 3 and row["removed"] == 3 for row in document["retrain"]["rows"])
    models = document["models"]
    # 3 subsets + the full model + up to 4 removals (repeats are measured once)
    assert models["cached"] == 0 and models["trained"] + models["reused"] == 8
    for name in ("lds.csv", "retrain.csv", "table.md"):
        assert (tmp_path / "one" / name).stat().st_size > 0
    assert "LDS loss" in first.stdout

    second = counterfactual(tmp_path / "two", tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "two" / "counterfactual.json").read_text())
    assert again["models"]["trained"] == 0 and again["models"]["cached"] == models["trained"]
    assert again["lds"] == document["lds"] and again["retrain"]["rows"] != []


def test_counterfactual_refuses_a_bad_setting_before_any_work(tmp_path: Path) -> None:
    done = counterfactual(tmp_path / "bad", tmp_path, "counterfactual.timesteps=[5000]")
    assert done.returncode == 2 and "counterfactual.timesteps" in done.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("model.json"))


def test_a_method_entry_may_carry_its_own_overrides(tmp_path: Path) -> None:
    methods = 'counterfactual.methods=[random,"ours_simulated projection.dim=16"]'
    done = counterfactual(tmp_path / "own", tmp_path, methods, "counterfactual.k=[]")
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((tmp_path / "own" / "counterfactual.json").read_text())
    assert set(document["lds"]) == {"random", "ours_simulated projection.dim=16"}


def test_worker_processes_train_every_model_the_protocols_then_read(tmp_path: Path) -> None:
    done = counterfactual(tmp_path / "par", tmp_path, "counterfactual.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((tmp_path / "par" / "counterfactual.json").read_text())
    models = document["models"]
    # the pool trained each distinct model once; the protocols trained nothing and read them all
    assert models["parallel"]["trained"] >= 4 and models["parallel"]["cached"] == 0
    assert models["trained"] == 0 and models["cached"] == models["parallel"]["trained"]
    assert set(document["lds"]) == {"ours_simulated", "random"}
    stored = [entry for entry in (tmp_path / "cache" / "models").iterdir() if entry.is_dir()]
    assert len(stored) == models["parallel"]["trained"]
