"""The real `mwga` console script, run in a temporary folder: outputs, sweeps, launchers, determinism, errors.

Small corpora (``dataset.num_clips=60``) keep it fast; exactly one run uses the full default config.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, SyntheticMotionBenchmark

from mwga_core import hookimpl
from mwga_core.api.errors import DataError
from mwga_core.pipeline.run import run_attribution

SMALL = "dataset.num_clips=60"
#: the paper's simulated gradient: seconds per run, for tests of the CLI's mechanics
SIMULATED = "method=ours_simulated"
#: the default method (real gradients) on the small corpus with a short training run
REAL_SMALL = (SMALL, "model.training.steps=100", "model.training.checkpoints=[50]")
MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)


#: only against a hung process, never tight: on a loaded machine a run takes many times longer than quiet
SUBPROCESS_TIMEOUT_S = 3600


def mwga(*args: str, cwd: Path, timeout: int = SUBPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the installed console script; the plugin env vars of the calling shell are dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    return subprocess.run([MWGA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    return done


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- single runs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_run(tmp_path: Path) -> None:
    """Bare `mwga`: trains the default model on the 200 clips and attributes with its real gradients."""
    done = ok(mwga(cwd=tmp_path))
    out = only(sorted(tmp_path.glob("outputs/*/*"))).resolve()
    for name in ("results.json", "metrics.csv", "table.md", "rankings.csv", ".hydra/config.yaml"):
        assert (out / name).is_file(), name

    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "ours"
    assert results["corpus"] == {"num_train": 200, "num_queries": 6, "class_names": list(PATTERNS)}
    assert results["config"]["dataset"]["num_clips"] == 200
    assert results["config"]["descriptor"] == {"name": "hoof", "bins": 8, "normalize": "l1"}
    assert (results["config"]["projection"]["name"], results["config"]["projection"]["dim"]) == (
        "sparse_jl",
        2048,
    )
    assert results["config"]["gradient"]["name"] == "diffusion"
    assert results["config"]["model"]["conditional"] is False
    assert results["config"]["scorer"] == {"name": "cosine", "neighbours": 5, "exact_neighbours_below": 20000}
    mean = results["metrics"]["mean"]
    assert list(mean) == ["P@5", "P@10", "P@20", "R@20", "MRR", "NDCG@20", "score_gap", "mean_gt_rank"]
    assert list(results["metrics"]["per_pattern"]) == list(PATTERNS)
    assert mean["P@10"] > 0.5  # the method works: random retrieval gives about 1/6

    # the table printed is the paper's layout: one row per pattern, then the mean
    for label in ("Pattern", "P@5", "NDCG@20", "Mean GT rank", "horizontal pan", "zoom in", "Mean"):
        assert label in done.stdout
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + 6 + 1 and table[-1].startswith("| Mean |")
    metrics = read_csv(out / "metrics.csv")
    assert [row["pattern"] for row in metrics] == [*PATTERNS, "mean"]
    assert float(metrics[-1]["P@10"]) == pytest.approx(mean["P@10"])

    rankings = read_csv(out / "rankings.csv")
    assert len(rankings) == 6 * 200
    for query in results["per_query"]:
        rows = [r for r in rankings if r["query_id"] == query["query_id"]]
        assert [int(r["rank"]) for r in rows] == list(range(1, 201))
        assert len({r["clip_id"] for r in rows}) == 200
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)
        relevant = [int(r["relevant"]) for r in rows]
        assert relevant == [int(r["clip_pattern"] == query["pattern"]) for r in rows]
        # results.json's metrics are those of this ranking
        assert query["P@5"] == pytest.approx(sum(relevant[:5]) / 5)
        assert query["R@20"] == pytest.approx(sum(relevant[:20]) / sum(relevant))


@pytest.mark.slow  # trains a model (100 steps) in a subprocess
def test_override_of_a_component_field(tmp_path: Path) -> None:
    ok(mwga("method=ours", "descriptor.bins=16", *REAL_SMALL, "hydra.run.dir=run", cwd=tmp_path))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["descriptor"]["bins"] == 16
    assert results["method"] == "ours"
    assert results["corpus"]["num_train"] == 60
    # real gradients of a 100-step model already rank by motion (0.57 measured; random gives ~0.2)
    assert results["config"]["gradient"]["contrast"] == "reverse_static"
    assert results["metrics"]["mean"]["NDCG@20"] > 0.35


# -- multiruns ------------------------------------------------------------------------------------


def test_projection_dim_sweep_writes_the_aggregated_table(tmp_path: Path) -> None:
    done = ok(mwga("-m", "projection.dim=32,64,128,256,512", SIMULATED, SMALL, cwd=tmp_path))
    sweep = only(sorted(tmp_path.glob("multirun/*/*"))).resolve()
    summary = read_csv(sweep / "summary.csv")
    assert [row["projection.dim"] for row in summary] == ["32", "64", "128", "256", "512"]
    assert {"P@5", "P@10", "P@20", "R@20", "MRR", "NDCG@20", "score_gap", "mean_gt_rank"} <= set(summary[0])
    for row in summary:
        job = json.loads((sweep / row["job"] / "results.json").read_text())
        assert job["config"]["projection"]["dim"] == int(row["projection.dim"])
        assert float(row["MRR"]) == pytest.approx(job["metrics"]["mean"]["MRR"])
    markdown = (sweep / "summary.md").read_text().splitlines()
    assert len(markdown) == 2 + 5 and "projection.dim" in markdown[0]
    assert "Sweep summary" in done.stdout


def test_method_sweep(tmp_path: Path) -> None:
    ok(mwga("-m", "method=ours_simulated,random,appearance,flow_magnitude", SMALL, cwd=tmp_path))
    sweep = only(sorted(tmp_path.glob("multirun/*/*"))).resolve()
    summary = {row["method"]: row for row in read_csv(sweep / "summary.csv")}
    assert list(summary) == ["ours_simulated", "random", "appearance", "flow_magnitude"]
    for method, row in summary.items():
        results = json.loads((sweep / row["job"] / "results.json").read_text())
        assert results["method"] == method
    configs = {
        m: json.loads((sweep / r["job"] / "results.json").read_text())["config"] for m, r in summary.items()
    }
    assert configs["random"]["scorer"]["name"] == "random"
    assert configs["appearance"]["descriptor"]["name"] == "appearance"
    assert configs["flow_magnitude"]["descriptor"]["name"] == "flow_magnitude"
    assert float(summary["ours_simulated"]["P@10"]) > float(summary["random"]["P@10"]) + 0.3


def seeded_runs(root: Path, *overrides: str) -> dict[str, Path]:
    """Output folders of two separate `mwga <overrides> seed=0` processes (own caches each)."""
    runs = {}
    for name in ("seed0", "seed0_again"):
        (root / name).mkdir(parents=True)
        ok(mwga(*overrides, "seed=0", "hydra.run.dir=run", cwd=root / name))
        runs[name] = root / name / "run"
    return runs


@pytest.mark.slow
def test_same_config_and_seed_give_identical_outputs(tmp_path: Path) -> None:
    """The default method from two cold caches: same trained model, gradients and rankings, bit for bit."""
    runs = seeded_runs(tmp_path, *REAL_SMALL)
    for name in ("results.json", "rankings.csv", "metrics.csv", "table.md"):
        first = (runs["seed0"] / name).read_bytes()
        assert first == (runs["seed0_again"] / name).read_bytes(), name
    assert (
        json.loads((runs["seed0"] / "results.json").read_text())["config"]["gradient"]["name"] == "diffusion"
    )


def test_joblib_launcher_matches_plain_runs_and_seeds_differ(tmp_path: Path) -> None:
    plain = seeded_runs(tmp_path / "plain", SIMULATED, SMALL)
    ok(
        mwga(
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            SIMULATED,
            SMALL,
            "seed=0,1",
            "hydra.sweep.dir=sweep",
            cwd=tmp_path,
        )
    )
    summary = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [row["seed"] for row in summary] == ["0", "1"]
    assert (tmp_path / "sweep" / "summary.md").is_file()
    seed0, seed1 = (tmp_path / "sweep" / row["job"] / "results.json" for row in summary)
    # a job in a joblib worker process computes exactly what a plain run computes
    assert seed0.read_bytes() == (plain["seed0"] / "results.json").read_bytes()
    assert plain["seed0_again"].joinpath("results.json").read_bytes() == seed0.read_bytes()
    # another seed gives other data and other numbers, not only another recorded seed
    assert seed1.read_bytes() != seed0.read_bytes()
    assert json.loads(seed1.read_text())["metrics"] != json.loads(seed0.read_text())["metrics"]


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("descriptor.bins=0", ["descriptor.bins=0", "an integer >= 1"]),
        ("projection.dim=0", ["projection.dim=0", "an integer >= 1"]),
        ("eval.precision_at=[500]", ["eval.precision_at=[500]", "1 <= k <= 60"]),
        ("dataset.num_clips=3", ["dataset.num_clips=3", ">= 6"]),
        ("device=cuda", ["device='cuda'", "cpu"]),
        ("motion=none", ["motion='none'", "needs optical flow"]),
    ],
)
def test_user_errors_exit_with_a_message_naming_the_field(
    override: str, expected: list[str], tmp_path: Path
) -> None:
    done = mwga(SIMULATED, SMALL, override, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())  # the console may wrap long lines
    assert "error:" in message
    for text in expected:
        assert text in message
    assert "Traceback" not in done.stderr


#: how each command that composes a config is called, before its overrides
COMPOSING_COMMANDS = {
    "mwga": [],
    "index": ["index", "corpus", "--out", "index"],
    "model-check": ["model-check"],
    "flow-eval": ["flow-eval"],
}


@pytest.mark.parametrize("command", sorted(COMPOSING_COMMANDS))
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("descriptor=nope", ["descriptor=nope: no such option", "hoof", "appearance"]),  # lists the options
        ("descriptor.binz=3", ["descriptor.binz: no such field in HoofConfig", "bins, normalize"]),
        ("descriptor.bins=abc", ["descriptor.bins:", "could not be converted to Integer"]),
        # the `+` Hydra suggests after a typo adds a key nothing reads: refused, naming the fields
        ("+descriptor.max_magnitud=1.5", ["descriptor.max_magnitud: no such field in HoofConfig", "bins"]),
    ],
)
def test_composition_errors_read_the_same_from_every_command(
    command: str, override: str, expected: list[str], tmp_path: Path
) -> None:
    (tmp_path / "corpus").mkdir()
    done = mwga(*COMPOSING_COMMANDS[command], SIMULATED, override, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    for text in expected:
        assert text in errors[0]
    assert not list(tmp_path.glob("outputs/*/*/results.json"))


def test_a_sweep_with_a_bad_value_fails_in_one_line(tmp_path: Path) -> None:
    done = mwga("-m", SIMULATED, SMALL, "descriptor.bins=abc,8", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: descriptor.bins: Value 'abc' of type 'str' could not be converted to Integer"
    ]


@pytest.mark.parametrize(
    ("override", "group", "name"),
    [
        ("scorer=dot", "scorer", "dot"),
        ("scorer=trak", "scorer", "trak"),
        ("projection=none", "projection", "none"),
    ],
)
def test_a_component_swaps_under_the_default_method(
    override: str, group: str, name: str, tmp_path: Path
) -> None:
    """method=ours sets scorer.neighbours and projection.dim through the options it picks
    (scorer=cosine_neighbours, projection=sparse_jl_2048), so another option replaces them whole."""
    done = ok(mwga(override, "--cfg", "job", cwd=tmp_path))
    composed = yaml.safe_load(done.stdout)
    assert composed[group]["name"] == name
    assert composed["method_name"] == "ours"
    assert composed["gradient"]["name"] == "diffusion"  # the rest of the preset stays


# -- static and broken clips, through the Python API ----------------------------------------------


@dataclass
class DoctoredConfig(SyntheticConfig):
    """The synthetic benchmark with some clips replaced."""

    constant_query: int = -1
    constant_train: int = -1
    nan_train: int = -1


class DoctoredBenchmark(SyntheticMotionBenchmark):
    def load(self, ctx):
        corpus = super().load(ctx)
        c = self.config
        if c.constant_query >= 0:
            corpus.queries.frames[c.constant_query] = 0.5
        if c.constant_train >= 0:
            corpus.train.frames[c.constant_train] = 0.25
        if c.nan_train >= 0:
            corpus.train.frames[c.nan_train, 5, 3, 3] = np.nan
        return corpus


class DoctoredPlugin:
    @hookimpl
    def mwga_register_datasets(self, register):
        register("doctored", DoctoredBenchmark, DoctoredConfig, description="test data")


@pytest.fixture
def doctored(host, compose_config):
    host.add_plugin(DoctoredPlugin(), "doctored")
    return lambda *overrides: compose_config(
        "method=ours_simulated", "dataset=doctored", "dataset.num_clips=24", *overrides
    )


def test_static_query_is_refused_naming_the_query(doctored, ctx) -> None:
    cfg = doctored("dataset.constant_query=1")
    with pytest.raises(DataError, match=r"query clip\(s\) query-vertical_tilt-0 show no motion"):
        run_attribution(cfg, ctx)


def test_static_training_clip_only_warns(doctored, ctx, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mwga"):
        result = run_attribution(doctored("dataset.constant_train=3"), ctx)
    assert result.static_training_ids == ["train-00003"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("train-00003" in w and "no motion" in w for w in warnings), warnings
    assert result.scores.shape == (6, 24) and np.isfinite(result.scores).all()
    assert np.all(result.scores[:, 3] == 0.0)  # no motion, no gradient, no influence


def test_nan_frame_is_refused_naming_clip_and_frame(doctored, ctx) -> None:
    with pytest.raises(DataError, match=r"training clip 'train-00002' has NaN .* frame 5"):
        run_attribution(doctored("dataset.nan_train=2"), ctx)


def test_the_random_baseline_needs_no_motion(doctored, ctx) -> None:
    # a static query has nothing to attribute for the motion method, but the random baseline scores it
    result = run_attribution(doctored("method=random", "dataset.constant_query=1"), ctx)
    assert result.scores.shape == (6, 24)


def test_every_subcommand_target_resolves_to_a_function():
    import importlib

    from mwga_core.cli.main import SUBCOMMANDS

    for name, target in SUBCOMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), f"mwga {name} -> {target}"
