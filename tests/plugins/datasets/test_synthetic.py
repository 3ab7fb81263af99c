"""The paper's synthetic benchmark: balance, seeding, shapes, exact ground-truth flow, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import (
    PATTERNS,
    SyntheticConfig,
    SyntheticMotionBenchmark,
    render_clip,
)

from mwga_core.api.clips import Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError


def load(seed: int = 0, **fields) -> Corpus:
    config = SyntheticConfig(name="synthetic", **fields)
    return SyntheticMotionBenchmark(config).load(RunContext(seed=seed))


@pytest.fixture(scope="module")
def default_corpus() -> Corpus:
    return load()


def test_default_corpus_shape_and_range(default_corpus: Corpus) -> None:
    train, queries = default_corpus.train, default_corpus.queries
    assert train.frames.shape == (200, 16, 32, 32, 1) and train.frames.dtype == np.float32
    assert queries.frames.shape == (6, 16, 32, 32, 1)
    assert train.gt_flow.shape == (200, 15, 32, 32, 2) and train.gt_flow.dtype == np.float32
    assert queries.gt_flow.shape == (6, 15, 32, 32, 2)
    for frames in (train.frames, queries.frames):
        assert np.isfinite(frames).all()
        assert frames.min() >= 0.0 and frames.max() <= 1.0
    default_corpus.validate()


def test_labels_are_balanced(default_corpus: Corpus) -> None:
    assert default_corpus.class_names == list(PATTERNS)
    counts = np.bincount(default_corpus.train.labels, minlength=6)
    assert counts.tolist() == [34, 34, 33, 33, 33, 33]


def test_ids_are_unique_and_queries_are_apart_from_training(default_corpus: Corpus) -> None:
    train_ids, query_ids = default_corpus.train.ids, default_corpus.queries.ids
    assert train_ids[:2] == ["train-00000", "train-00001"] and len(set(train_ids)) == 200
    assert not set(train_ids) & set(query_ids)
    # no query is a copy of a training clip
    train_flat = default_corpus.train.frames.reshape(200, -1)
    for query in default_corpus.queries.frames.reshape(6, -1):
        assert np.abs(train_flat - query).max(axis=1).min() > 0.05


def test_queries_per_pattern_sets_ids_and_labels() -> None:
    corpus = load(num_clips=12, queries_per_pattern=2)
    assert corpus.queries.ids == [f"query-{p}-{j}" for p in PATTERNS for j in (0, 1)]
    assert corpus.queries.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert len(set(corpus.queries.ids)) == 12
    # the two queries of one pattern are different clips
    assert not np.array_equal(corpus.queries.frames[0], corpus.queries.frames[1])


def test_same_seed_same_frames_other_seed_other_frames(default_corpus: Corpus) -> None:
    again = load()
    assert np.array_equal(again.train.frames, default_corpus.train.frames)
    assert np.array_equal(again.queries.frames, default_corpus.queries.frames)
    assert np.array_equal(again.train.gt_flow, default_corpus.train.gt_flow)
    other = load(seed=1)
    assert other.train.labels.tolist() == default_corpus.train.labels.tolist()
    differing = [
        not np.array_equal(a, b) for a, b in zip(other.train.frames, default_corpus.train.frames, strict=True)
    ]
    assert all(differing)
    assert not np.array_equal(other.queries.frames, default_corpus.queries.frames)


def test_a_larger_corpus_starts_with_the_smaller_one(default_corpus: Corpus) -> None:
    larger = load(num_clips=500)
    assert larger.train.ids[:200] == default_corpus.train.ids
    assert np.array_equal(larger.train.frames[:200], default_corpus.train.frames)
    assert np.array_equal(larger.train.gt_flow[:200], default_corpus.train.gt_flow)
    assert np.array_equal(larger.train.labels[:200], default_corpus.train.labels)
    assert np.array_equal(larger.queries.frames, default_corpus.queries.frames)


def test_textures_and_speeds_vary_per_clip(default_corpus: Corpus) -> None:
    pans = default_corpus.train.gt_flow[default_corpus.train.labels == 0]
    speeds = pans[:, 0, 0, 0, 0]  # a pan's flow is (v, 0) everywhere
    assert np.allclose(pans[..., 0], speeds[:, None, None, None]) and np.all(pans[..., 1] == 0)
    assert len(np.unique(speeds)) == len(speeds) and speeds.min() >= 0.5 and speeds.max() <= 2.0


def warp_back_error(
    frames: np.ndarray, flow: np.ndarray, margin: int = 4, interpolation: str = "INTER_CUBIC"
) -> float:
    """Largest over frame pairs of the mean |frame_t(x) - frame_t+1(x + flow_t(x))| away from the borders."""
    import cv2

    size = frames.shape[-1]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    errors = []
    for t in range(len(flow)):
        back = cv2.remap(
            frames[t + 1],
            xs + flow[t, ..., 0],
            ys + flow[t, ..., 1],
            getattr(cv2, interpolation),
            borderMode=cv2.BORDER_REPLICATE,
        )
        errors.append(np.abs(back - frames[t])[margin:-margin, margin:-margin].mean())
    return float(np.max(errors))


def ramp_texture(axis: int):
    """A stand-in for the random texture: a linear ramp, which bilinear resampling reproduces exactly."""

    def texture(rng: np.random.Generator, size: int, config: SyntheticConfig) -> np.ndarray:
        ramp = (0.1 + 0.8 * np.arange(size) / (size - 1)).astype(np.float32)
        return np.ascontiguousarray(
            np.broadcast_to(ramp[None, :] if axis == 0 else ramp[:, None], (size, size))
        )

    return texture


@pytest.mark.parametrize("pattern", PATTERNS)
def test_ground_truth_flow_is_exact(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a linear texture every resampling step is exact, so warping frame t+1 back by the true flow
    # must give frame t to float precision, while a flow off by 5 % or 0.05 px is visibly wrong.
    # Ramps along x and along y together see an error in either flow component.
    import mwga_plugins.datasets.synthetic as synthetic

    config = SyntheticConfig(name="synthetic")
    errors: dict[str, list[float]] = {"exact": [], "scaled": [], "shifted": []}
    for axis in (0, 1):
        monkeypatch.setattr(synthetic, "_texture", ramp_texture(axis))
        frames, flow = render_clip(pattern, np.random.default_rng(3), config)
        for key, candidate in (("exact", flow), ("scaled", 0.95 * flow), ("shifted", flow + 0.05)):
            errors[key].append(warp_back_error(frames, candidate, margin=2, interpolation="INTER_LINEAR"))
    assert max(errors["exact"]) < 1e-5
    assert max(errors["scaled"]) > 3e-5 and max(errors["shifted"]) > 1e-4


@pytest.mark.parametrize("pattern", PATTERNS)
def test_ground_truth_flow_warps_each_frame_onto_the_previous(pattern: str) -> None:
    # Real (smooth random) textures: resampling twice leaves a small interpolation error, far below a
    # wrong flow's.
    config = SyntheticConfig(name="synthetic", texture_blur=[2.0, 2.0])
    for seed in range(3):
        frames, flow = render_clip(pattern, np.random.default_rng(seed), config)
        exact = warp_back_error(frames, flow)
        assert exact < 0.005, (seed, exact)
        assert 2.5 * exact < warp_back_error(frames, np.zeros_like(flow))
        assert 2.5 * exact < warp_back_error(frames, -flow)


def test_ground_truth_flow_fits_the_default_textures(default_corpus: Corpus) -> None:
    train = default_corpus.train
    for index in range(12):  # two clips of every pattern
        assert warp_back_error(train.frames[index, ..., 0], train.gt_flow[index]) < 0.02


def test_farneback_recovers_the_ground_truth_on_pans(default_corpus: Corpus, ctx: RunContext) -> None:
    from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow

    pans = np.flatnonzero(default_corpus.train.labels == 0)[:10]
    flows = FarnebackFlow(FarnebackConfig(name="farneback")).estimate(default_corpus.train.frames[pans], ctx)
    gt = default_corpus.train.gt_flow[pans]
    end_point_error = np.hypot(flows[..., 0] - gt[..., 0], flows[..., 1] - gt[..., 1])
    assert end_point_error.mean() < 0.5
    assert end_point_error.mean(axis=(1, 2, 3)).max() < 0.5  # every clip, not just on average


def test_pattern_subset_is_balanced_over_its_own_patterns() -> None:
    corpus = load(num_clips=7, patterns=["zoom_in", "horizontal_pan"])
    assert corpus.class_names == ["zoom_in", "horizontal_pan"]
    assert corpus.train.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert corpus.queries.ids == ["query-zoom_in-0", "query-horizontal_pan-0"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_clips": 5}, "num_clips"),
        ({"num_clips": 0}, "num_clips"),
        ({"patterns": ["horizontal_pan", "spin"]}, "patterns"),
        ({"patterns": []}, "patterns"),
        ({"patterns": ["zoom_in", "zoom_in"]}, "patterns"),
        ({"speed": [2.0, 0.5]}, "speed"),
        ({"speed": [0.0, 1.0]}, "speed"),
        ({"speed": [1.0]}, "speed"),
        ({"rotation_deg": [4.0, 1.0]}, "rotation_deg"),
        ({"zoom_rate": [0.05, 0.02]}, "zoom_rate"),
        ({"texture_blur": [2.0, 0.5]}, "texture_blur"),
        ({"num_frames": 1}, "num_frames"),
        ({"size": 4}, "size"),
        ({"queries_per_pattern": 0}, "queries_per_pattern"),
        ({"pixel_noise": -0.1}, "pixel_noise"),
    ],
)
def test_config_errors_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        SyntheticMotionBenchmark(SyntheticConfig(name="synthetic", **fields))
    assert raised.value.field == field
    assert "expected" in str(raised.value)


def test_config_errors_through_the_host_name_the_group(host) -> None:
    with pytest.raises(ConfigValueError, match=r"^dataset\.num_clips=3 .*>= 6"):
        host.build("dataset", {"name": "synthetic", "num_clips": 3})
    with pytest.raises(ConfigValueError, match=r"dataset\.patterns=.*'spin'.*horizontal_pan"):
        host.build("dataset", {"name": "synthetic", "patterns": ["spin"]})


# --- benchmark variants ---------------------------------------------------------------------------


def mean_flow(corpus: Corpus, pattern: str) -> np.ndarray:
    """(n, 2) mean ground-truth flow of the training clips of one pattern."""
    clips = corpus.train.labels == PATTERNS.index(pattern)
    return corpus.train.gt_flow[clips].mean(axis=(1, 2, 3))


def curl_and_divergence(corpus: Corpus, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """(n,) mean curl and divergence of the first frame pair's flow of one pattern's clips."""
    flow = corpus.train.gt_flow[corpus.train.labels == PATTERNS.index(pattern), 0]
    du_dy, du_dx = np.gradient(flow[..., 0], axis=(1, 2))
    dv_dy, dv_dx = np.gradient(flow[..., 1], axis=(1, 2))
    return (dv_dx - du_dy).mean(axis=(1, 2)), (du_dx + dv_dy).mean(axis=(1, 2))


def test_fixed_directions_are_the_papers(default_corpus: Corpus) -> None:
    assert (mean_flow(default_corpus, "horizontal_pan")[:, 0] > 0).all()
    assert (mean_flow(default_corpus, "vertical_tilt")[:, 1] > 0).all()
    assert (mean_flow(default_corpus, "diagonal_slide") > 0).all()
    curl, _ = curl_and_divergence(default_corpus, "rotation_cw")
    _, divergence = curl_and_divergence(default_corpus, "zoom_in")
    assert (curl > 0).all() and (divergence > 0).all()


def test_both_directions_move_each_class_either_way_at_the_same_speeds() -> None:
    corpus = load(num_clips=120, direction="both", rotation_direction="both", zoom_direction="both")
    pans, tilts, slides = (
        mean_flow(corpus, p) for p in ("horizontal_pan", "vertical_tilt", "diagonal_slide")
    )
    for along in (pans[:, 0], tilts[:, 1], slides[:, 0]):
        assert (along > 0).any() and (along < 0).any()
        assert ((np.abs(along) >= 0.5 / np.sqrt(2) - 1e-6) & (np.abs(along) <= 2.0 + 1e-6)).all()
    assert np.allclose(slides[:, 0], slides[:, 1])  # still along the diagonal
    assert np.allclose(pans[:, 1], 0.0) and np.allclose(tilts[:, 0], 0.0)
    curl, _ = curl_and_divergence(corpus, "rotation_cw")
    _, divergence = curl_and_divergence(corpus, "zoom_in")
    assert (curl > 0).any() and (curl < 0).any() and (divergence > 0).any() and (divergence < 0).any()


def test_the_walk_turns_gradually_and_jitter_does_not() -> None:
    def turns(random_motion: str) -> float:
        corpus = load(num_clips=60, random_motion=random_motion)
        flow = corpus.train.gt_flow[corpus.train.labels == PATTERNS.index("random")].mean(axis=(2, 3))
        angles = np.arctan2(flow[..., 1], flow[..., 0])
        return float(np.abs(np.angle(np.exp(1j * np.diff(angles, axis=1)))).mean())

    assert turns("walk") < 0.5 < turns("jitter")


@pytest.mark.parametrize(
    "variant",
    [
        {"texture": "natural", "texture_blur": [2.0, 2.0]},
        {"channels": 3, "texture_blur": [2.0, 2.0]},
        {
            "direction": "both",
            "rotation_direction": "both",
            "zoom_direction": "both",
            "texture_blur": [2.0, 2.0],
        },
    ],
    ids=["natural", "rgb", "both"],
)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_ground_truth_flow_fits_every_variant(variant: dict, pattern: str) -> None:
    # Measured on the moving pixels (objects move over a static background): the true flow warps each
    # frame onto the previous one far better than no flow or the reversed flow.
    import cv2

    config = SyntheticConfig(name="synthetic", **variant)
    for seed in range(2):
        frames, flow = render_clip(pattern, np.random.default_rng(seed), config)
        grey = frames.mean(axis=-1) if frames.ndim == 4 else frames
        size = grey.shape[-1]
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        moving = np.hypot(flow[..., 0], flow[..., 1]) > 0.2
        moving[:, :3] = moving[:, -3:] = moving[:, :, :3] = moving[:, :, -3:] = False

        # and not at an object's edge, where it covers or uncovers the background
        inner = np.stack([cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in moving])
        errors = {
            name: float(np.abs(warped(grey, candidate, xs, ys) - grey[:-1])[inner].mean())
            for name, candidate in (("exact", flow), ("none", np.zeros_like(flow)), ("reversed", -flow))
        }
        assert errors["exact"] < 0.02, (seed, errors)
        assert 1.5 * errors["exact"] < min(errors["none"], errors["reversed"]), (seed, errors)


def warped(frames: np.ndarray, flow: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(T-1, H, W): each next frame warped back onto its previous one by ``flow``."""
    import cv2

    return np.stack(
        [
            cv2.remap(frames[t + 1], xs + flow[t, ..., 0], ys + flow[t, ..., 1], cv2.INTER_LINEAR)
            for t in range(len(flow))
        ]
    )


@pytest.mark.parametrize("pattern", PATTERNS)
def test_object_flow_is_exact_inside_the_object(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On linear textures (object and background), warping back by the true flow is exact inside the
    object (away from its edge, where it covers or uncovers the background), and 0 outside."""
    import cv2
    import mwga_plugins.datasets.synthetic as synthetic

    config = SyntheticConfig(name="synthetic", texture="objects")
    exact_errors, scaled_errors = [], []
    for axis in (0, 1):  # ramps along x and along y together see an error in either flow component
        monkeypatch.setattr(synthetic, "_texture", ramp_texture(axis))
        frames, flow = render_clip(pattern, np.random.default_rng(5), config)
        size = frames.shape[-1]
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        moving = np.hypot(flow[..., 0], flow[..., 1]) > 0
        inner = np.stack([cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in moving])
        inner[:, :2] = inner[:, -2:] = inner[:, :, :2] = inner[:, :, -2:] = False
        assert inner.sum() > 100
        exact_errors.append(np.abs(warped(frames, flow, xs, ys) - frames[:-1])[inner].max())
        scaled_errors.append(np.abs(warped(frames, 0.9 * flow, xs, ys) - frames[:-1])[inner].max())
    assert max(exact_errors) < 1e-5 and max(scaled_errors) > max(5e-5, 100 * max(exact_errors))


def test_objects_move_over_a_static_background() -> None:
    import cv2

    corpus = load(num_clips=12, texture="objects")
    frames, flow = corpus.train.frames[..., 0], corpus.train.gt_flow
    moving = np.hypot(flow[..., 0], flow[..., 1]) > 0
    for clip in range(12):
        share = moving[clip].mean()
        assert 0.05 < share < 0.6, (clip, share)  # objects, not the whole frame
        # a few pixels away from any object, in two frames running, the background does not change at all
        near = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0 for m in moving[clip]])
        still = ~near[:-1] & ~near[1:]
        assert still.mean() > 0.2
        assert np.array_equal(frames[clip, :-2][still], frames[clip, 1:-1][still])


def test_rgb_frames_have_three_correlated_but_different_channels() -> None:
    frames = load(num_clips=6, channels=3).train.frames
    assert frames.shape[-1] == 3 and frames.min() >= 0 and frames.max() <= 1
    red, green = frames[..., 0].ravel(), frames[..., 1].ravel()
    assert not np.allclose(red, green) and np.corrcoef(red, green)[0, 1] > 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [("direction", "left"), ("texture", "cloth"), ("random_motion", "drift"), ("channels", 2)],
)
def test_variant_fields_refuse_unknown_values(field: str, value: object) -> None:
    with pytest.raises(ConfigValueError, match=field):
        SyntheticMotionBenchmark(SyntheticConfig(name="synthetic", **{field: value}))
