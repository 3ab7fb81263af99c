"""`mwga counterfactual` end to end with tiny settings: the JSON's structure and the cached subset models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    # an unconditional model gets no model check: the document keeps its shape, no key and no column
    assert set(document) == UNCONDITIONAL_KEYS
    assert all(set(row) == ROW_KEYS for row in document["retrain"]["rows"])
    assert all(set(row) == {"removal", "k", "queries", "delta"} for row in document["retrain"]["summary"])
    assert set(models) == {"trained", "cached", "reused", "seconds", "parallel"}
    header = (tmp_path / "one" / "retrain.csv").read_text().splitlines()[0]
    assert header == "query,k,removal,removed,delta_loss,delta_motion,cached"
    assert "check drop" not in first.stdout

    second = counterfactual(tmp_path / "two", tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "two" / "counterfactual.json").read_text())
    assert again["models"]["trained"] == 0 and again["models"]["cached"] == models["trained"]
    assert again["lds"] == document["lds"] and again["retrain"]["rows"] != []


#: counterfactual.json's keys and a retrain row's keys for an unconditional model
UNCONDITIONAL_KEYS = {
    "settings", "seed", "dataset", "model", "queries", "num_train", "subsets", "lds", "retrain",
    "full_outputs", "subset_outputs", "models", "seconds",
}  # fmt: skip
ROW_KEYS = {"query", "k", "removal", "removed", "delta", "cached"}
#: a tiny class-conditional model with guidance (the model of method=ours_generative) and a fast check
CONDITIONAL = [
    "counterfactual.model=video_denoiser_guided",
    "model.channels=8",
    "model.blocks=1",
    "model.sample_steps=2",
    "counterfactual.check_per_class=2",
]


@pytest.mark.slow
def test_a_conditional_model_reports_the_model_check_drop_of_each_removal(tmp_path: Path) -> None:
    # counterfactual.subsets=0: the retraining protocol only, no subset model is trained
    first = counterfactual(tmp_path / "one", tmp_path, *CONDITIONAL, "counterfactual.subsets=0")
    assert first.returncode == 0, first.stderr[-3000:]
    document = json.loads((tmp_path / "one" / "counterfactual.json").read_text())
    assert set(document) == UNCONDITIONAL_KEYS | {"full_model_check"}
    assert document["lds"] == {} and document["subsets"] == []
    assert "LDS: not run" in first.stdout and "LDS loss" not in (tmp_path / "one" / "table.md").read_text()
    full = document["full_model_check"]
    assert full["samples_per_class"] == 2 and len(full["accuracy"]) == 6
    rows = document["retrain"]["rows"]
    assert len(rows) == 4 and all(set(row) == ROW_KEYS | {"model_check"} for row in rows)
    for row in rows:
        check = row["model_check"]
        assert check["class"] in full["accuracy"] and row["query"].startswith(f"query-{check['class']}")
        for accuracy, drop in (("accuracy", "drop"), ("paired_accuracy", "paired_drop")):
            assert 0 <= check[accuracy] <= 1 and -1 <= check[drop] <= 1
            assert check[drop] == full[accuracy][check["class"]] - check[accuracy]
    for row in document["retrain"]["summary"]:
        assert set(row["model_check"]) == {"accuracy", "drop", "paired_accuracy", "paired_drop"}
    models = document["models"]
    # the full model and each distinct removal's model, each checked once
    assert models["checks"] == 1 + len(rows) - models["reused"] and models["check_seconds"] > 0
    header = (tmp_path / "one" / "retrain.csv").read_text().splitlines()[0]
    assert header.endswith(",cached,check_accuracy,check_drop,check_paired_accuracy,check_paired_drop")
    assert "check drop" in (tmp_path / "one" / "table.md").read_text() and "check drop" in first.stdout

    # a rerun reads every model from the store and samples the same clips: the same checks, bit for bit
    second = counterfactual(tmp_path / "two", tmp_path, *CONDITIONAL, "counterfactual.subsets=0")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "two" / "counterfactual.json").read_text())
    assert again["models"]["trained"] == 0
    assert again["full_model_check"] == full
    assert [row["model_check"] for row in again["retrain"]["rows"]] == [row["model_check"] for row in rows]


def test_counterfactual_refuses_a_bad_setting_before_any_work(tmp_path: Path) -> None:
    done = counterfactual(tmp_path / "bad", tmp_path, "counterfactual.timesteps=[5000]")
    assert done.returncode == 2 and "counterfactual.timesteps" in done.stderr
    done = counterfactual(tmp_path / "bad", tmp_path, "counterfactual.check_per_class=0")
    assert done.returncode == 2 and "counterfactual.check_per_class=0" in done.stderr
    done = counterfactual(tmp_path / "bad", tmp_path, "counterfactual.subsets=1")
    assert done.returncode == 2 and "counterfactual.subsets=1" in done.stderr and "0 (no LDS)" in done.stderr
    done = counterfactual(tmp_path / "bad", tmp_path, "counterfactual.subsets=0", "counterfactual.k=[]")
    assert done.returncode == 2 and "nothing runs" in done.stderr
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
