"""The feature store: resume after a crash, config keys, stale stores, and the pipeline integration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig
from omegaconf import OmegaConf

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource
from mwga_core.pipeline.run import Components, featurize, run_attribution
from mwga_core.storage.feature_store import FeatureStore, feature_key, feature_key_parts


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


def make_cfg(**changes):
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "dataset": {"name": "fake", "num_clips": 10},
            "motion": {"name": "none"},
            "descriptor": {"name": "hoof", "bins": 8},
            "gradient": {"name": "counting", "chunk": 3},
            "projection": {"name": "gaussian", "dim": 16},
            "model": {"name": "video_denoiser", "channels": 48},
            "scorer": {"name": "cosine"},
            "eval": {"k": 20},
            "cache": {"dir": "/somewhere"},
            "method_name": "ours",
        }
    )
    for dotted, value in changes.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value)
    return cfg


def components(gradient: GradientSource, projector_name: str = "gaussian") -> Components:
    if projector_name == "gaussian":
        projector = GaussianProjector(GaussianProjectorConfig(dim=16))
    else:
        projector = SparseJLProjector(SparseJLProjectorConfig(dim=16))
    return Components(None, None, None, gradient, projector, None)


def open_store(ctx, clips, **changes) -> FeatureStore:
    return FeatureStore.open(
        ctx.cache_dir, feature_key_parts(make_cfg(**changes), "train", clips), ctx.console
    )


@pytest.mark.parametrize("projector", ["gaussian", "sparse_jl"])
def test_interrupted_featurization_resumes_with_only_the_missing_clips(ctx, projector):
    clips = make_clips(10)
    reference = featurize(clips, components(CountingGradient(CountingConfig()), projector), ctx)
    assert reference.shape == (2, 10, 16)

    # chunks of 4 die after two chunks; the resumed run uses chunks of 3 over the 2 remaining clips,
    # so chunk boundaries differ from the reference run's
    dying = CountingGradient(CountingConfig(chunk=4, fail_after_chunks=2))
    with pytest.raises(Killed):
        featurize(clips, components(dying, projector), ctx, open_store(ctx, clips))
    assert dying.computed == [f"clip{i:02d}" for i in range(8)]

    resumed_store = open_store(ctx, clips)
    assert resumed_store.done.tolist() == [True] * 8 + [False] * 2
    resuming = CountingGradient(CountingConfig())
    features = featurize(clips, components(resuming, projector), ctx, resumed_store)
    assert resuming.computed == ["clip08", "clip09"]
    if projector == "sparse_jl":
        # a row-wise projector gives bit-identical features whatever the chunking
        np.testing.assert_array_equal(features, reference)
    else:
        # a dense matmul over a different number of rows may round the last bit differently
        np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)

    # a third run computes nothing at all
    idle = CountingGradient(CountingConfig())
    np.testing.assert_array_equal(
        featurize(clips, components(idle, projector), ctx, open_store(ctx, clips)), features
    )
    assert idle.computed == []
    manifest = json.loads((resumed_store.path / "manifest.json").read_text())
    assert manifest["shape"] == [2, 10, 16] and manifest["clips_done"] == 10
    assert manifest["config"]["projection"] == {"name": "gaussian", "dim": 16}


def test_key_changes_with_what_changes_features_only():
    clips = make_clips(4)

    def key(**changes) -> str:
        return feature_key(feature_key_parts(make_cfg(**changes), "train", clips))

    base = key()
    for changed in (
        {"projection__dim": 32},
        {"projection__name": "fastfood"},
        {"seed": 1},
        {"gradient__chunk": 4},
        {"descriptor__bins": 16},
        {"dataset__num_clips": 11},
        {"model__channels": 64},
    ):
        assert key(**changed) != base, changed
    for unchanged in (
        {"scorer__name": "trak"},
        {"eval__k": 10},
        {"cache__dir": "/elsewhere"},
        {"method_name": "other"},
        {"device": "cuda"},
    ):
        assert key(**unchanged) == base, unchanged
    parts = feature_key_parts(make_cfg(), "train", clips)
    assert feature_key(feature_key_parts(make_cfg(), "queries", clips)) != base
    assert feature_key(feature_key_parts(make_cfg(), "train", clips, checkpoint_id="abc")) != base
    assert feature_key(feature_key_parts(make_cfg(), "train", make_clips(5))) != base
    assert parts["clips"]["count"] == 4


def test_changed_projection_dim_makes_a_new_store(ctx):
    clips = make_clips(4)
    first = open_store(ctx, clips)
    featurize(clips, components(CountingGradient(CountingConfig())), ctx, first)
    other = open_store(ctx, clips, projection__dim=32)
    assert other.path != first.path and not other.done.any()
    assert open_store(ctx, clips).complete()


@pytest.mark.parametrize(
    "damage", ["garbage_manifest", "mismatched_manifest", "truncated_features", "no_done"]
)
def test_damaged_store_is_recomputed_with_a_warning(ctx, console_text, damage):
    clips = make_clips(6)
    reference = featurize(clips, components(CountingGradient(CountingConfig())), ctx, open_store(ctx, clips))
    path = open_store(ctx, clips).path
    if damage == "garbage_manifest":
        (path / "manifest.json").write_text("{ not json")
    elif damage == "mismatched_manifest":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["seed"] = 123
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "truncated_features":
        data = (path / "features.npy").read_bytes()
        (path / "features.npy").write_bytes(data[: len(data) // 2])
    else:
        (path / "done.npy").unlink()
    store = open_store(ctx, clips)
    assert not store.done.any()
    assert "stale" in console_text.getvalue() and str(path) in console_text.getvalue().replace("\n", "")
    again = CountingGradient(CountingConfig())
    np.testing.assert_array_equal(featurize(clips, components(again), ctx, store), reference)
    assert len(again.computed) == 6


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


def test_pipeline_reuses_stored_features(compose_config, ctx, console_text):
    cfg = compose_config("method=ours_simulated", "dataset.num_clips=30", "projection=sparse_jl")
    first = run_attribution(cfg, ctx)
    stores = list((ctx.cache_dir / "features").iterdir())
    assert len(stores) == 2  # train and queries
    second = run_attribution(cfg, ctx)
    assert ctx.stage_log[-2]["status"].startswith(f"{30 + len(first.corpus.queries)} of")
    np.testing.assert_array_equal(second.train_features, first.train_features)
    np.testing.assert_array_equal(second.scores, first.scores)
    off = compose_config(
        "method=ours_simulated", "dataset.num_clips=30", "projection=sparse_jl", "feature_store=false"
    )
    np.testing.assert_array_equal(run_attribution(off, ctx).scores, first.scores)
