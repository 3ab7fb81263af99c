"""The stage cache: atomic concurrent writes, damaged entries, the key chain, and what a sweep reuses."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor
from mwga_plugins.gradients.simulated import SimulatedGradient, SimulatedGradientConfig
from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow

from mwga_core import hookimpl
from mwga_core.pipeline.run import run_attribution
from mwga_core.storage.keys import code_version, module_source_hash
from mwga_core.storage.stage_cache import StageCache

MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)
BIG = (64, 256, 256)  # 16 MB: writing it takes long enough for two writers to overlap


def write_same_entry(root: str, barrier, value: float) -> None:
    cache = StageCache(Path(root))
    array = np.full(BIG, value, dtype=np.float32)
    barrier.wait()
    for _ in range(3):
        cache.save("flows", "samekey", {"flows": array, "ids": np.arange(5)}, config={"v": value})


def test_concurrent_writers_of_one_key_leave_one_valid_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=write_same_entry, args=(str(tmp_path), barrier, value)) for value in (1.0, 2.0)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    folder = tmp_path / "stages" / "flows"
    assert [p.name for p in folder.iterdir()] == ["samekey"]  # no temporary folders left behind
    arrays, _ = StageCache(tmp_path).load("flows", "samekey", {"flows": BIG})
    # one writer's copy, whole: never a mix of the two
    assert np.unique(arrays["flows"]).tolist() in ([1.0], [2.0])
    manifest = json.loads((folder / "samekey" / "manifest.json").read_text())
    assert manifest["config"]["v"] == float(arrays["flows"][0, 0, 0])


def damage(folder: Path, how: str) -> None:
    if how == "truncated":
        data = (folder / "flows.npy").read_bytes()
        (folder / "flows.npy").write_bytes(data[: len(data) // 2])
    elif how == "manifest":
        (folder / "manifest.json").write_text("{not json")
    elif how == "missing":
        (folder / "flows.npy").unlink()
    elif how == "shape":
        np.save(folder / "flows.npy", np.zeros((2, 3), dtype=np.float32))
    elif how == "altered":  # a valid array of the right shape and dtype: only the checksum tells
        np.save(folder / "flows.npy", np.zeros((4, 3), dtype=np.float32))


@pytest.mark.parametrize("how", ["truncated", "manifest", "missing", "shape", "altered"])
def test_a_damaged_entry_is_a_miss_with_a_warning_naming_it(tmp_path: Path, how: str) -> None:
    warnings: list[str] = []
    cache = StageCache(tmp_path, warn=warnings.append)
    cache.save("flows", "k1", {"flows": np.ones((4, 3), dtype=np.float32)})
    damage(cache.path("flows", "k1"), how)
    calls = []

    def compute():
        calls.append(1)
        return {"flows": np.full((4, 3), 7, dtype=np.float32)}, {}

    output = cache.fetch("flows", "k1", compute, expect={"flows": (4, 3)})
    assert not output.cached and calls == [1]
    assert len(warnings) == 1 and str(cache.path("flows", "k1")) in warnings[0]
    # the recomputed entry replaced the damaged one
    assert cache.fetch("flows", "k1", compute).cached and calls == [1]
    np.testing.assert_array_equal(cache.load("flows", "k1")[0]["flows"], np.full((4, 3), 7))


def test_an_entry_of_an_unexpected_shape_is_a_miss(tmp_path: Path) -> None:
    warnings: list[str] = []
    cache = StageCache(tmp_path, warn=warnings.append)
    cache.save("descriptors", "k", {"descriptors": np.ones((5, 8), dtype=np.float32)})
    assert cache.load("descriptors", "k", {"descriptors": (5, None)}) is not None
    assert cache.load("descriptors", "k", {"descriptors": (6, None)}) is None
    assert "expected [6, None]" in warnings[0]


def test_a_disabled_cache_neither_reads_nor_writes(tmp_path: Path) -> None:
    StageCache(tmp_path).save("scores", "k", {"scores": np.ones(3)})
    off = StageCache(tmp_path, enabled=False)
    output = off.fetch("scores", "k", lambda: ({"scores": np.zeros(3)}, {}))
    assert not output.cached and output.arrays["scores"].tolist() == [0, 0, 0]
    assert off.fetch("scores", "k2", lambda: ({"scores": np.zeros(3)}, {})).cached is False
    assert not off.path("scores", "k2").exists()


def test_keys_change_with_config_inputs_seed_and_code(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    motion = FarnebackFlow(FarnebackConfig())
    key = cache.key("flows", motion, inputs=["dataset-a/train"])
    assert key == cache.key("flows", FarnebackFlow(FarnebackConfig()), inputs=["dataset-a/train"])
    assert key != cache.key("flows", FarnebackFlow(FarnebackConfig(levels=2)), inputs=["dataset-a/train"])
    assert key != cache.key("flows", motion, inputs=["dataset-b/train"])
    assert key != cache.key("flows", motion, inputs=["dataset-a/query"])
    assert key != StageCache(tmp_path, seed=1).key("flows", motion, inputs=["dataset-a/train"])
    # the chain: a new flows key gives a new descriptors key
    hoof = HoofDescriptor(HoofConfig())
    other = cache.key("flows", FarnebackFlow(FarnebackConfig(levels=2)), inputs=["dataset-a/train"])
    assert cache.key("descriptors", hoof, inputs=[key]) != cache.key("descriptors", hoof, inputs=[other])
    # the code hash covers the component's module and its base classes' modules
    assert set(code_version(motion)) >= {"mwga_plugins.motion.farneback", "mwga_core.api.motion"}


def test_editing_a_module_changes_its_code_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_file = tmp_path / "edited_component.py"
    module_file.write_text("class Thing:\n    config = {'a': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import edited_component

    cache = StageCache(tmp_path)
    before = cache.key("flows", edited_component.Thing())
    module_file.write_text("class Thing:\n    config = {'a': 1}  # edited\n")
    module_source_hash.cache_clear()
    assert cache.key("flows", edited_component.Thing()) != before
    sys.modules.pop("edited_component")


# -- the pipeline -------------------------------------------------------------------------------------

CALLS: dict[str, int] = {}


class SpyFlow(FarnebackFlow):
    def estimate(self, frames, ctx):
        CALLS["flows"] = CALLS.get("flows", 0) + 1
        return super().estimate(frames, ctx)


class SpyHoof(HoofDescriptor):
    def describe(self, frames, flows, ctx):
        CALLS["descriptors"] = CALLS.get("descriptors", 0) + 1
        return super().describe(frames, flows, ctx)


class SpyGradient(SimulatedGradient):
    def iter_gradients(self, clips, ctx):
        CALLS["gradients"] = CALLS.get("gradients", 0) + 1
        yield from super().iter_gradients(clips, ctx)


class SpyPlugin:
    @hookimpl
    def mwga_register_motion_estimators(self, register):
        register("spy_flow", SpyFlow, FarnebackConfig, description="counts calls")

    @hookimpl
    def mwga_register_descriptors(self, register):
        register("spy_hoof", SpyHoof, HoofConfig, description="counts calls")

    @hookimpl
    def mwga_register_gradient_sources(self, register):
        register("spy_gradient", SpyGradient, SimulatedGradientConfig, description="counts calls")


@pytest.fixture
def spied(host, compose_config):
    host.add_plugin(SpyPlugin(), "spy")
    CALLS.clear()
    base = ("motion=spy_flow", "descriptor=spy_hoof", "gradient=spy_gradient", "dataset.num_clips=24")
    return lambda *overrides: compose_config(*base, *overrides)


def test_a_projection_change_reuses_flows_descriptors_and_gradients(spied, ctx) -> None:
    first = run_attribution(spied("projection.dim=32"), ctx)
    assert CALLS == {"flows": 2, "descriptors": 2, "gradients": 2}  # train and queries
    assert [s["status"] for s in ctx.stage_log] == ["computed", "computed", "gradients computed", "computed"]
    ctx.stage_log.clear()
    second = run_attribution(spied("projection.dim=64"), ctx)
    assert CALLS == {"flows": 2, "descriptors": 2, "gradients": 2}  # nothing recomputed
    assert [s["status"] for s in ctx.stage_log] == ["cached", "cached", "gradients cached", "computed"]
    assert second.train_features.shape[2] == 64 and first.train_features.shape[2] == 32
    ctx.stage_log.clear()
    run_attribution(spied("projection.dim=32", "feature_store=false"), ctx)
    assert CALLS["gradients"] == 2 and ctx.stage_log[-1]["status"] == "cached"  # scores too
    # a descriptor change recomputes descriptors and gradients, not flows
    run_attribution(spied("projection.dim=32", "descriptor.bins=4"), ctx)
    assert CALLS == {"flows": 2, "descriptors": 4, "gradients": 4}


def test_projections_of_cached_gradients_equal_fresh_ones(spied, ctx, tmp_path: Path) -> None:
    run_attribution(spied("projection.dim=16"), ctx)  # fills the gradient cache
    cached = run_attribution(spied("projection.dim=48", "feature_store=false"), ctx)
    assert CALLS["gradients"] == 2
    fresh = run_attribution(spied("projection.dim=48", "feature_store=false", "cache.enabled=false"), ctx)
    assert CALLS["gradients"] == 4
    np.testing.assert_array_equal(cached.train_features, fresh.train_features)
    np.testing.assert_array_equal(cached.query_features, fresh.query_features)
    np.testing.assert_array_equal(cached.scores, fresh.scores)


def test_cache_gradients_false_keeps_no_raw_gradients(spied, ctx) -> None:
    run_attribution(spied("cache.gradients=false"), ctx)
    assert not (ctx.cache_dir / "stages" / "gradients").exists()
    assert (ctx.cache_dir / "stages" / "flows").is_dir()


def test_cached_and_uncached_runs_write_identical_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(tmp_path / "cache")
    results, statuses = [], []
    for number, switch in enumerate(("cache.enabled=false", "cache.enabled=true", "cache.enabled=true")):
        args = ["method=ours_simulated", "dataset.num_clips=30", f"hydra.run.dir=run-{number}", switch]
        done = subprocess.run(
            [MWGA, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results.append((tmp_path / f"run-{number}" / "results.json").read_bytes())
        statuses.append(
            [t["status"] for t in json.loads((tmp_path / f"run-{number}" / "timings.json").read_text())]
        )
    assert statuses[0][:2] == statuses[1][:2] == ["computed", "computed"]
    assert statuses[2][:2] == ["cached", "cached"]
    assert results[0] == results[1] == results[2]


def test_a_run_with_a_damaged_flows_entry_warns_and_recomputes(spied, ctx, caplog) -> None:
    import logging

    first = run_attribution(spied("feature_store=false"), ctx)
    entry = sorted((ctx.cache_dir / "stages" / "flows").iterdir())[0]
    (entry / "flows.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="mwga"):
        second = run_attribution(spied("feature_store=false"), ctx)
    assert any(str(entry) in record.getMessage() for record in caplog.records)
    assert CALLS["flows"] == 3  # the damaged split only
    np.testing.assert_array_equal(second.scores, first.scores)


def test_altered_cached_scores_are_detected_and_recomputed(spied, ctx, caplog) -> None:
    """All-zero scores written over a cached entry (a valid .npy) are caught by the manifest's checksum."""
    import logging

    first = run_attribution(spied(), ctx)
    (entry,) = (ctx.cache_dir / "stages" / "scores").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert len(manifest["arrays"]["scores"]["checksum"]) == 32
    np.save(entry / "scores.npy", np.zeros_like(first.scores))
    with caplog.at_level(logging.WARNING, logger="mwga"):
        second = run_attribution(spied(), ctx)
    assert any(str(entry) in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(second.scores, first.scores)
    assert ctx.stage_log[-1]["status"] == "computed"
    # the recomputed entry is whole again: a third run reads it
    np.testing.assert_array_equal(run_attribution(spied(), ctx).scores, first.scores)
    assert ctx.stage_log[-1]["status"] == "cached"
