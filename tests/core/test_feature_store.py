"""The resumable features entry: resume after a crash, keys, damaged entries, code edits, the pipeline."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource
from mwga_core.pipeline.featurize import LocalExecutor, featurize, featurize_cached
from mwga_core.pipeline.run import run_attribution
from mwga_core.pipeline.stages import features_key
from mwga_core.storage.feature_store import FeatureStore
from mwga_core.storage.keys import module_source_hash
from mwga_core.storage.stage_cache import StageCache


class Killed(Exception):
    """Stands in for the process dying mid-featurization."""


@dataclass
class CountingConfig(GradientConfig):
    chunk: int = 3
    fail_after_chunks: int = -1


class CountingGradient(GradientSource):
    """Gradients that depend on the clip id only, in chunks; records which clips it computed."""

    def __init__(self, config: CountingConfig) -> None:
        super().__init__(config)
        self.computed: list[str] = []

    def iter_gradients(self, clips: AnalysedClips, ctx) -> Iterator[GradientChunk]:
        for number, start in enumerate(range(0, len(clips), self.config.chunk)):
            if number == self.config.fail_after_chunks:
                raise Killed(f"killed after {number} chunks")
            indices = np.arange(start, min(start + self.config.chunk, len(clips)))
            ids = [clips.clips.ids[i] for i in indices]
            grads = np.stack(
                [ctx.rng("counting", clip_id).standard_normal((2, 300)) for clip_id in ids], axis=1
            )
            self.computed.extend(ids)
            yield GradientChunk(indices=indices, grads=torch.from_numpy(grads.astype(np.float32)))


def make_clips(count: int = 10) -> AnalysedClips:
    rng = np.random.default_rng(0)
    clips = ClipSet(
        frames=rng.random((count, 2, 4, 4, 1)).astype(np.float32),
        labels=np.arange(count) % 3,
        ids=[f"clip{i:02d}" for i in range(count)],
    )
    return AnalysedClips(clips=clips, descriptors=rng.random((count, 4)).astype(np.float32))


def projector_named(name: str = "gaussian", dim: int = 16):
    if name == "gaussian":
        return GaussianProjector(GaussianProjectorConfig(dim=dim))
    return SparseJLProjector(SparseJLProjectorConfig(dim=dim))


def executor(gradient: GradientSource, ctx, projector_name: str = "gaussian") -> LocalExecutor:
    return LocalExecutor(gradient, projector_named(projector_name), ctx)


@pytest.fixture
def cache(ctx) -> StageCache:
    warnings: list[str] = []
    return StageCache(ctx.cache_dir, warn=warnings.append)


def run_stored(clips, gradient, ctx, cache, projector_name="gaussian", key="k-train"):
    """featurize() through the features entry ``key``; returns (features, clips read from the entry)."""
    projector = projector_named(projector_name)
    return featurize_cached(clips, LocalExecutor(gradient, projector, ctx), ctx, cache, key, projector)


@pytest.mark.parametrize("projector", ["gaussian", "sparse_jl"])
def test_interrupted_featurization_resumes_with_only_the_missing_clips(ctx, cache, projector):
    clips = make_clips(10)
    reference = featurize(clips, executor(CountingGradient(CountingConfig()), ctx, projector), ctx)
    assert reference.shape == (2, 10, 16)

    # chunks of 4 die after two chunks; the resumed run uses chunks of 3 over the 2 remaining clips,
    # so chunk boundaries differ from the reference run's
    dying = CountingGradient(CountingConfig(chunk=4, fail_after_chunks=2))
    with pytest.raises(Killed):
        run_stored(clips, dying, ctx, cache, projector)
    assert dying.computed == [f"clip{i:02d}" for i in range(8)]
    assert not cache.path("features", "k-train").exists()  # not complete: not an entry yet

    resuming = CountingGradient(CountingConfig())
    with FeatureStore.open(cache, "k-train", 10, projector_named(projector).config) as store:
        assert store.done.tolist() == [True] * 8 + [False] * 2
        features = featurize(clips, executor(resuming, ctx, projector), ctx, store)
    assert resuming.computed == ["clip08", "clip09"]
    if projector == "sparse_jl":
        # a row-wise projector gives bit-identical features whatever the chunking
        np.testing.assert_array_equal(features, reference)
    else:
        # a dense matmul over a different number of rows may round the last bit differently
        np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)

    # complete: an ordinary stage-cache entry, and a third run computes nothing at all
    idle = CountingGradient(CountingConfig())
    again, stored = run_stored(clips, idle, ctx, cache, projector)
    np.testing.assert_array_equal(again, features)
    assert idle.computed == [] and stored == 10
    manifest = json.loads((cache.path("features", "k-train") / "manifest.json").read_text())
    assert manifest["arrays"]["features"]["shape"] == [2, 10, 16]
    assert manifest["config"]["dim"] == 16
    assert not cache.path("features", "k-train").with_name(".partial-k-train").exists()


def test_features_key_follows_the_gradients_key_and_the_projection(tmp_path: Path):
    cache = StageCache(tmp_path)
    base = features_key(cache, projector_named("gaussian", 16), "gradients-a")
    assert base == features_key(cache, projector_named("gaussian", 16), "gradients-a")
    assert base != features_key(cache, projector_named("gaussian", 32), "gradients-a")
    assert base != features_key(cache, projector_named("sparse_jl", 16), "gradients-a")
    assert base != features_key(cache, projector_named("gaussian", 16), "gradients-b")
    assert base != features_key(StageCache(tmp_path, seed=1), projector_named("gaussian", 16), "gradients-a")


@pytest.mark.parametrize(
    "damage", ["truncated_partial", "no_done", "garbage_manifest", "altered_features", "truncated_features"]
)
def test_damaged_entry_is_recomputed_with_a_warning(ctx, damage):
    warnings: list[str] = []
    cache = StageCache(ctx.cache_dir, warn=warnings.append)
    clips = make_clips(6)
    if damage in ("truncated_partial", "no_done"):  # a killed run's partial folder
        with pytest.raises(Killed):
            run_stored(clips, CountingGradient(CountingConfig(fail_after_chunks=1)), ctx, cache)
        path = cache.path("features", "k-train").with_name(".partial-k-train")
        reference = featurize(clips, executor(CountingGradient(CountingConfig()), ctx), ctx)
    else:
        reference, _ = run_stored(clips, CountingGradient(CountingConfig()), ctx, cache)
        path = cache.path("features", "k-train")
    if damage == "garbage_manifest":
        (path / "manifest.json").write_text("{ not json")
    elif damage == "altered_features":  # still a valid .npy of the right shape: only the checksum tells
        altered = np.load(path / "features.npy")
        altered[0, 0, 0] += 1.0
        np.save(path / "features.npy", altered)
    elif damage in ("truncated_features", "truncated_partial"):
        data = (path / "features.npy").read_bytes()
        (path / "features.npy").write_bytes(data[: len(data) // 2])
    else:
        (path / "done.npy").unlink()
    again = CountingGradient(CountingConfig())
    features, stored = run_stored(clips, again, ctx, cache)
    assert stored == 0 and len(again.computed) == 6
    np.testing.assert_array_equal(features, reference)
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_subset_keeps_every_field_aligned():
    clips = make_clips(5)
    clips.flows = np.random.default_rng(1).random((5, 1, 4, 4, 2)).astype(np.float32)
    clips.static = np.array([False, True, False, False, True])
    part = clips.subset([4, 1])
    assert part.clips.ids == ["clip04", "clip01"]
    assert part.static.tolist() == [True, True]
    np.testing.assert_array_equal(part.clips.frames, clips.clips.frames[[4, 1]])
    np.testing.assert_array_equal(part.flows, clips.flows[[4, 1]])
    np.testing.assert_array_equal(part.descriptors, clips.descriptors[[4, 1]])
    assert part.clips.labels.tolist() == [1, 1]


def features_entries(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "stages" / "features"
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def test_pipeline_reuses_stored_features(compose_config, ctx):
    cfg = compose_config("method=ours_simulated", "dataset.num_clips=30", "projection=sparse_jl")
    first = run_attribution(cfg, ctx)
    assert len(features_entries(ctx.cache_dir)) == 2  # train and queries
    second = run_attribution(cfg, ctx)
    assert ctx.stage_log[-2]["status"].startswith(f"{30 + len(first.corpus.queries)} of")
    np.testing.assert_array_equal(second.train_features, first.train_features)
    np.testing.assert_array_equal(second.scores, first.scores)
    off = compose_config(
        "method=ours_simulated", "dataset.num_clips=30", "projection=sparse_jl", "feature_store=false"
    )
    np.testing.assert_array_equal(run_attribution(off, ctx).scores, first.scores)


def test_editing_the_projector_module_recomputes_the_features(
    host, compose_config, ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A projector whose module is a temp copy of sparse_jl.py: features are read back while the file is
    unchanged, and recomputed (from the cached raw gradients) once it is edited."""
    import mwga_plugins.projectors.sparse_jl as original

    source = Path(original.__file__).read_text().replace('"sparse_jl",', '"edited_jl",')
    assert '"edited_jl",' in source
    module_file = tmp_path / "plugin_src" / "edited_jl_projector.py"
    module_file.parent.mkdir()
    module_file.write_text(source)
    monkeypatch.syspath_prepend(str(module_file.parent))
    monkeypatch.delitem(sys.modules, "edited_jl_projector", raising=False)
    host.add_plugin(importlib.import_module("edited_jl_projector"), "edited_jl")
    cfg = compose_config("method=ours_simulated", "dataset.num_clips=30", "projection=edited_jl")

    first = run_attribution(cfg, ctx)
    entries = features_entries(ctx.cache_dir)
    assert len(entries) == 2
    unchanged = run_attribution(cfg, ctx)
    assert "(cached)" in ctx.stage_log[-2]["status"]  # every clip read from the features entries
    np.testing.assert_array_equal(unchanged.train_features, first.train_features)

    module_file.write_text(source + "\n# edited: a comment changes the module's code hash\n")
    module_source_hash.cache_clear()  # a new process would read the file afresh
    try:
        edited = run_attribution(cfg, ctx)
    finally:
        module_source_hash.cache_clear()
    status = ctx.stage_log[-2]["status"]
    assert "feature store" not in status and status == "gradients cached"  # recomputed from raw gradients
    assert len(features_entries(ctx.cache_dir)) == 4 and set(entries) < set(features_entries(ctx.cache_dir))
    np.testing.assert_array_equal(edited.train_features, first.train_features)
    np.testing.assert_array_equal(edited.scores, first.scores)
