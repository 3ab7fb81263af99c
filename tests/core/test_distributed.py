"""executor=ray: featurization on a local 2-worker Ray cluster gives the single-process features."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mwga_core.api.errors import ConfigValueError, MwgaUserError
from mwga_core.pipeline.run import run_attribution

SMALL = ("method=ours_simulated", "dataset.num_clips=40", "projection.dim=64")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """A local Ray cluster of 2 CPUs whose files live in a temp folder; no auth token in the home dir."""
    ray = pytest.importorskip("ray")
    home = Path.home()
    home_before = set(os.listdir(home))
    token_existed = (home / ".ray" / "auth_token").exists()
    previous_mode = os.environ.get("RAY_AUTH_MODE")
    # Ray >= 2.5x enables token auth for a new local cluster and writes ~/.ray/auth_token otherwise.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # A short path: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="mwga-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_mode
        shutil.rmtree(temp_dir, ignore_errors=True)
    new_in_home = {name for name in set(os.listdir(home)) - home_before if "ray" in name.lower()}
    assert not new_in_home, f"Ray left {new_in_home} in {home}"
    assert token_existed or not (home / ".ray" / "auth_token").exists()


def test_ray_features_equal_local_features(ray_cluster, compose_config, ctx, console_text):
    local = run_attribution(compose_config(*SMALL, "feature_store=false"), ctx)
    # 7-clip chunks: several uneven chunks per worker, finishing in any order.
    distributed_cfg = compose_config(
        *SMALL, "executor=ray", "ray_num_workers=2", "ray_chunk_clips=7", "feature_store=true"
    )
    distributed = run_attribution(distributed_cfg, ctx)
    np.testing.assert_array_equal(distributed.train_features, local.train_features)
    np.testing.assert_array_equal(distributed.query_features, local.query_features)
    np.testing.assert_array_equal(distributed.scores, local.scores)
    # The Ray run filled the feature store: a local run now reads every clip from it.
    again = run_attribution(compose_config(*SMALL, "feature_store=true"), ctx)
    assert ctx.stage_log[-2]["status"].startswith(f"{40 + len(local.corpus.queries)} of")
    np.testing.assert_array_equal(again.train_features, local.train_features)


@pytest.mark.slow
def test_ray_diffusion_features_match_local_up_to_float32_rounding(ray_cluster, compose_config, ctx):
    # vmap over a chunk of clips and 1-thread actors may round float32 convolutions differently.
    tiny = (
        "dataset.num_clips=24",
        "gradient=diffusion",
        "model.training.steps=5",
        "model.training.checkpoints=[]",
    )
    local = run_attribution(compose_config(*tiny, *SMALL[2:], "feature_store=false"), ctx)
    distributed = run_attribution(
        compose_config(*tiny, *SMALL[2:], "feature_store=false", "executor=ray", "ray_chunk_clips=5"), ctx
    )
    scale = np.abs(local.train_features).max()
    np.testing.assert_allclose(distributed.train_features, local.train_features, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(distributed.query_features, local.query_features, rtol=0, atol=1e-5 * scale)


def test_ray_index_equals_local_index(ray_cluster, host, ctx, tmp_path, monkeypatch, write_clips):
    from mwga_core.config.compose import compose
    from mwga_core.pipeline import ray_executor as distributed
    from mwga_core.retrieval.index import index_corpus
    from mwga_core.storage.index_store import load_index

    started = []
    start_workers = distributed._start_workers
    monkeypatch.setattr(distributed, "_start_workers", lambda *a: started.append(a[4]) or start_workers(*a))

    def make_index(out: Path, *overrides: str):
        small = [
            "method=ours_simulated",
            "dataset.num_frames=8",
            "dataset.size=[24]",
            "projection.dim=16",
            "dataset.labels=folders",
        ]
        cfg = compose([*small, *overrides], host=host, config_name="index")
        return index_corpus(tmp_path / "corpus", out, cfg, ctx, host=host, batch_size=4)

    write_clips(tmp_path / "corpus", 0, 10)
    on_ray = ("executor=ray", "ray_num_workers=2", "ray_chunk_clips=3")
    distributed_run = make_index(tmp_path / "ray", *on_ray)
    assert (distributed_run.computed, started) == (10, [2])  # 3 batches, one set of actors
    make_index(tmp_path / "local")
    local, remote = load_index(tmp_path / "local"), load_index(tmp_path / "ray")
    assert remote.clips == local.clips
    for name in ("features", "descriptors", "static"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))

    # executor is not part of the index's identity: Ray extends an index made locally
    write_clips(tmp_path / "corpus", 10, 3)
    extended = make_index(tmp_path / "local", *on_ray)
    assert (extended.computed, extended.reused) == (3, 10)
    make_index(tmp_path / "fresh")
    np.testing.assert_array_equal(
        load_index(tmp_path / "local").features, load_index(tmp_path / "fresh").features
    )


def test_unknown_executor_is_refused_before_any_work(compose_config, ctx):
    with pytest.raises(ConfigValueError, match=r"executor='dask'.*\['local', 'ray'\]"):
        run_attribution(compose_config(*SMALL, "executor=dask"), ctx)
    with pytest.raises(ConfigValueError, match="ray_chunk_clips=0"):
        run_attribution(compose_config(*SMALL, "ray_chunk_clips=0"), ctx)
    assert ctx.stage_log == []


def test_executor_ray_without_ray_says_how_to_install(compose_config, ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail like a missing package
    with pytest.raises(MwgaUserError, match=r"pip install 'mwga\[ray\]'"):
        run_attribution(compose_config(*SMALL, "executor=ray"), ctx)
