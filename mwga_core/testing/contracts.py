"""Contract tests every component of a kind must pass, written once and reused by every plugin.

A contract is a plain class of ``test_*`` methods. Subclass the one for your kind in a class whose name
starts with ``Test`` and set:

``component_class``
    the component (a subclass of the kind's abstract base).
``config``
    optional: a config instance to test with (small settings keep the tests fast). Defaults to the
    config registered with the component, with its defaults.
``plugin``
    optional: the module (or object) holding the ``@hookimpl`` that registers the component. Defaults
    to the module that defines ``component_class``.
``registered_name``
    optional: which registered name to test when one class is registered under several names.

Every contract runs the common checks of :class:`~mwga_core.testing.component.ComponentContract`
(registration, config defaults, declared field ranges, construction); the kind-specific checks are listed
on each contract. Inputs are tiny moving clips the kit renders itself
(:func:`mwga_core.testing.inputs.small_corpus`), so a contract runs in seconds and needs no built-in
plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mwga_core.api.clips import AnalysedClips, ClipSet, Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.motion import to_grey
from mwga_core.testing.component import ComponentContract
from mwga_core.testing.inputs import make_context, random_features, small_analysed, small_corpus, static_clips

# -- one contract per kind ---------------------------------------------------------------------------


class DatasetContract(ComponentContract):
    """A dataset loads a valid corpus, identically for the same seed.

    Set ``config`` to a small setting: the checks load the corpus a few times.
    """

    group = "dataset"

    def test_load_gives_valid_corpus(self, ctx: RunContext) -> None:
        corpus = self.make_component().load(ctx)
        assert isinstance(corpus, Corpus)
        corpus.validate()
        for split in (corpus.train, corpus.queries):
            assert split.frames.dtype == np.float32
            assert split.frames.min() >= 0.0 and split.frames.max() <= 1.0
            assert np.issubdtype(split.labels.dtype, np.integer)
            assert ((split.labels >= -1) & (split.labels < len(corpus.class_names))).all()
            if split.gt_flow is not None:
                n, t, h, w, _ = split.frames.shape
                assert split.gt_flow.shape == (n, t - 1, h, w, 2)
                assert np.isfinite(split.gt_flow).all()

    def test_load_is_deterministic(self, tmp_path: Path) -> None:
        first = self.make_component().load(make_context(tmp_path / "a"))
        second = self.make_component().load(make_context(tmp_path / "b"))
        assert first.class_names == second.class_names
        for a, b in ((first.train, second.train), (first.queries, second.queries)):
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.frames, b.frames)


class MotionEstimatorContract(ComponentContract):
    """Flow of the right shape and dtype, deterministic, near zero on a static clip.

    ``static_flow_tolerance`` (px) bounds the mean flow magnitude on clips that do not move;
    ``check_direction`` compares the mean flow of pans, tilts and slides with the exact flow (this
    catches swapped (dy, dx) channels and flipped signs).
    """

    group = "motion"
    static_flow_tolerance: ClassVar[float] = 0.1
    check_direction: ClassVar[bool] = True

    @pytest.fixture
    def frames(self) -> np.ndarray:
        return small_corpus(size=32).train.frames[:6]

    def _flow_or_skip(self) -> Any:
        component = self.make_component()
        if not component.produces_flow:
            pytest.skip("this estimator computes no flow (produces_flow = False)")
        return component

    def test_estimate_shape_and_dtype(self, frames: np.ndarray, ctx: RunContext) -> None:
        flows = self._flow_or_skip().estimate(frames, ctx)
        n, t, h, w, _ = frames.shape
        assert flows.shape == (n, t - 1, h, w, 2)
        assert flows.dtype == np.float32
        assert np.isfinite(flows).all()

    def test_estimate_pair_shape(self, frames: np.ndarray) -> None:
        grey = to_grey(frames)
        flow = self._flow_or_skip().estimate_pair(grey[0, 0], grey[0, 1])
        assert flow.shape == (*grey.shape[2:], 2)
        assert np.isfinite(flow).all()

    def test_rgb_frames(self, frames: np.ndarray, ctx: RunContext) -> None:
        flows = self._flow_or_skip().estimate(np.repeat(frames[:2], 3, axis=-1), ctx)
        assert flows.shape == (2, frames.shape[1] - 1, *frames.shape[2:4], 2)
        assert np.isfinite(flows).all()

    def test_estimate_is_deterministic(self, frames: np.ndarray, tmp_path: Path) -> None:
        first = self._flow_or_skip().estimate(frames, make_context(tmp_path / "a"))
        second = self._flow_or_skip().estimate(frames, make_context(tmp_path / "b"))
        np.testing.assert_array_equal(first, second)

    def test_static_clip_gives_near_zero_flow(self, frames: np.ndarray, ctx: RunContext) -> None:
        flows = self._flow_or_skip().estimate(static_clips(frames), ctx)
        assert np.isfinite(flows).all()
        assert np.hypot(flows[..., 0], flows[..., 1]).mean() < self.static_flow_tolerance

    def test_constant_frames_give_finite_flow(self, frames: np.ndarray, ctx: RunContext) -> None:
        flows = self._flow_or_skip().estimate(np.full_like(frames[:2], 0.5), ctx)
        assert np.isfinite(flows).all()

    def test_flow_direction_matches_translations(self, ctx: RunContext) -> None:
        if not self.check_direction:
            pytest.skip("check_direction = False")
        corpus = small_corpus(size=32)
        translations = [
            corpus.class_names.index(p) for p in ("horizontal_pan", "vertical_tilt", "diagonal_slide")
        ]
        chosen = np.flatnonzero(np.isin(corpus.train.labels, translations))
        flows = self._flow_or_skip().estimate(corpus.train.frames[chosen], ctx)
        for flow, exact in zip(flows, corpus.train.gt_flow[chosen], strict=True):
            measured, truth = flow.reshape(-1, 2).mean(axis=0), exact.reshape(-1, 2).mean(axis=0)
            cosine = measured @ truth / (np.linalg.norm(measured) * np.linalg.norm(truth) + 1e-12)
            assert cosine > 0.9, f"mean flow {measured} points away from the exact {truth}"


class DescriptorContract(ComponentContract):
    """(N, B) float32 finite descriptors, deterministic, finite on static clips, one clip at a time.

    ``batch_independent`` (default True): a clip's descriptor must not depend on the other clips in the
    batch, because the pipeline describes the training clips and the queries in separate calls.
    """

    group = "descriptor"
    batch_independent: ClassVar[bool] = True

    @pytest.fixture
    def clips(self) -> ClipSet:
        return small_corpus().train

    def _describe(self, frames: np.ndarray, flows: np.ndarray, ctx: RunContext) -> np.ndarray:
        component = self.make_component()
        return component.describe(frames, flows if component.needs_flow else None, ctx)

    def test_describe_shape_and_dtype(self, clips: ClipSet, ctx: RunContext) -> None:
        descriptors = self._describe(clips.frames, clips.gt_flow, ctx)
        assert descriptors.ndim == 2 and descriptors.shape[0] == len(clips) and descriptors.shape[1] >= 1
        assert descriptors.dtype == np.float32
        assert np.isfinite(descriptors).all()

    def test_describe_is_deterministic(self, clips: ClipSet, tmp_path: Path) -> None:
        first = self._describe(clips.frames, clips.gt_flow, make_context(tmp_path / "a"))
        second = self._describe(clips.frames, clips.gt_flow, make_context(tmp_path / "b"))
        np.testing.assert_array_equal(first, second)

    def test_static_clip_gives_finite_descriptor(self, clips: ClipSet, ctx: RunContext) -> None:
        frames = static_clips(clips.frames)
        descriptors = self._describe(frames, np.zeros_like(clips.gt_flow), ctx)
        assert descriptors.shape[0] == len(clips)
        assert np.isfinite(descriptors).all()

    def test_constant_frames_give_finite_descriptor(self, clips: ClipSet, ctx: RunContext) -> None:
        descriptors = self._describe(np.full_like(clips.frames, 0.5), np.zeros_like(clips.gt_flow), ctx)
        assert np.isfinite(descriptors).all()

    def test_descriptor_does_not_depend_on_batch(self, clips: ClipSet, ctx: RunContext) -> None:
        if not self.batch_independent:
            pytest.skip("batch_independent = False")
        whole = self._describe(clips.frames, clips.gt_flow, ctx)
        part = self._describe(clips.frames[3:7], clips.gt_flow[3:7], ctx)
        np.testing.assert_allclose(part, whole[3:7], rtol=1e-5, atol=1e-6)


class GradientSourceContract(ComponentContract):
    """Chunks (K, n, D) that cover every clip exactly once; queries land in the same space; deterministic.

    Set ``config`` to a small setting if the source trains or loads something in ``prepare``.
    """

    group = "gradient"

    def collect(self, source: Any, clips: AnalysedClips, ctx: RunContext) -> np.ndarray:
        """All gradients of ``clips`` by clip index, checking every chunk. Returns (K, N, D) float32."""
        parts: dict[int, np.ndarray] = {}
        shape: tuple[int, int] | None = None
        for chunk in source.iter_gradients(clips, ctx):
            grads = chunk.grads.detach().cpu().numpy()
            indices = np.asarray(chunk.indices)
            assert grads.ndim == 3, f"chunk grads must be (K, n, D); got shape {grads.shape}"
            assert grads.dtype == np.float32, f"chunk grads must be float32; got {grads.dtype}"
            assert grads.shape[1] == len(indices), f"{len(indices)} indices for {grads.shape[1]} gradients"
            assert shape is None or (grads.shape[0], grads.shape[2]) == shape, "K or D changed between chunks"
            shape = (grads.shape[0], grads.shape[2])
            assert np.isfinite(grads).all()
            for column, index in enumerate(indices):
                assert 0 <= int(index) < len(clips), f"index {index} outside 0..{len(clips) - 1}"
                assert int(index) not in parts, f"clip {index} yielded twice"
                parts[int(index)] = grads[:, column]
        assert sorted(parts) == list(range(len(clips))), "some clips got no gradient"
        return np.stack([parts[i] for i in range(len(clips))], axis=1)

    def test_chunks_cover_every_clip_once(self, ctx: RunContext) -> None:
        source = self.make_component()
        train = small_analysed("train")
        source.prepare(train, ctx)
        grads = self.collect(source, train, ctx)
        assert grads.shape[1] == len(train) and grads.shape[2] >= 1

    def test_queries_share_the_training_space(self, ctx: RunContext) -> None:
        source = self.make_component()
        train, queries = small_analysed("train"), small_analysed("query")
        source.prepare(train, ctx)
        train_grads = self.collect(source, train, ctx)
        query_grads = self.collect(source, queries, ctx)
        assert query_grads.shape[0] == train_grads.shape[0]
        assert query_grads.shape[2] == train_grads.shape[2]

    def test_gradients_are_deterministic(self, tmp_path: Path) -> None:
        results = []
        for run in ("a", "b"):
            ctx = make_context(tmp_path / run)
            source, train = self.make_component(), small_analysed("train")
            source.prepare(train, ctx)
            results.append(self.collect(source, train, ctx))
        np.testing.assert_array_equal(results[0], results[1])

    def test_static_clips_give_finite_gradients(self, ctx: RunContext) -> None:
        source = self.make_component()
        train = small_analysed("train")
        source.prepare(train, ctx)
        clips = train.clips
        still = ClipSet(
            static_clips(clips.frames), clips.labels, list(clips.ids), np.zeros_like(clips.gt_flow)
        )
        static = AnalysedClips(
            clips=still,
            flows=np.zeros_like(clips.gt_flow),
            descriptors=np.zeros_like(train.descriptors),
            static=np.ones(len(clips), dtype=bool),
        )
        self.collect(source, static, ctx)


class ProjectorContract(ComponentContract):
    """(n, D) -> (n, P) float32; the same map in every call, instance and chunking of the rows.

    ``input_dims`` are the gradient dimensions D tried (the second crosses the built-in Gaussian
    projector's 4096-row block boundary).
    """

    group = "projection"
    input_dims: ClassVar[tuple[int, ...]] = (300, 5000)
    rows: ClassVar[int] = 9

    def _grads(self, dim: int) -> Any:
        import torch

        return torch.from_numpy(random_features(1, self.rows, dim, seed=dim)[0])

    def test_project_shape_and_dtype(self, ctx: RunContext) -> None:
        projector = self.make_component()
        for dim in self.input_dims:
            grads = self._grads(dim)
            out = projector.project(grads, ctx)
            assert out.ndim == 2 and out.shape[0] == self.rows and out.shape[1] >= 1
            assert str(out.dtype) == "torch.float32"
            assert out.device == grads.device
            assert bool(out.isfinite().all())

    def test_same_map_across_calls_and_instances(self, tmp_path: Path) -> None:
        for dim in self.input_dims:
            grads = self._grads(dim)
            first = self.make_component().project(grads, make_context(tmp_path / "a")).numpy()
            again = self.make_component().project(grads, make_context(tmp_path / "b")).numpy()
            np.testing.assert_array_equal(first, again)

    def test_chunking_does_not_change_the_result(self, ctx: RunContext) -> None:
        import torch

        projector = self.make_component()
        for dim in self.input_dims:
            grads = self._grads(dim)
            whole = projector.project(grads, ctx).numpy()
            pieces = torch.cat([projector.project(grads[:4], ctx), projector.project(grads[4:], ctx)])
            np.testing.assert_allclose(pieces.numpy(), whole, rtol=1e-5, atol=1e-5)

    def test_output_dim_does_not_depend_on_rows(self, ctx: RunContext) -> None:
        projector = self.make_component()
        grads = self._grads(self.input_dims[0])
        assert projector.project(grads[:1], ctx).shape[1] == projector.project(grads, ctx).shape[1]


class ScorerContract(ComponentContract):
    """(K, Q, P) and (K, N, P) features -> (Q, N) finite scores, deterministic, zero rows allowed."""

    group = "scorer"

    def _features(self, checkpoints: int = 1) -> tuple[np.ndarray, np.ndarray]:
        dim = 16 if self.make_component().uses_features else 0
        return random_features(checkpoints, 4, dim, seed=1), random_features(checkpoints, 11, dim, seed=2)

    def test_score_shape(self, ctx: RunContext) -> None:
        query, train = self._features()
        scores = np.asarray(self.make_component().score(query, train, ctx))
        assert scores.shape == (4, 11)
        assert np.issubdtype(scores.dtype, np.floating)
        assert np.isfinite(scores).all()

    def test_several_checkpoints(self, ctx: RunContext) -> None:
        query, train = self._features(checkpoints=3)
        scores = np.asarray(self.make_component().score(query, train, ctx))
        assert scores.shape == (4, 11)
        assert np.isfinite(scores).all()

    def test_score_is_deterministic(self, tmp_path: Path) -> None:
        query, train = self._features()
        first = self.make_component().score(query, train, make_context(tmp_path / "a"))
        second = self.make_component().score(query, train, make_context(tmp_path / "b"))
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))

    def test_zero_feature_rows_give_finite_scores(self, ctx: RunContext) -> None:
        query, train = self._features()
        train[:, :3] = 0.0  # static clips can end up with all-zero features
        query[:, :1] = 0.0
        scores = np.asarray(self.make_component().score(query, train, ctx))
        assert np.isfinite(scores).all()
