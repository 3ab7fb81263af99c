"""The HOOF family: known flows give known histograms, and each variant does what its name says."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import SyntheticConfig, render_clip
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor
from mwga_plugins.descriptors.hoof_family import (
    GridHoofConfig,
    HoofVariantConfig,
    HoofVariantDescriptor,
    MirrorHoofConfig,
    OrientationMagnitudeHoofConfig,
    PyramidHoofConfig,
    SoftHoofConfig,
    StaticBinHoofConfig,
    pyramid_segments,
)

from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import small_corpus

# Every option's defaults run through the contract in tests/plugins/test_contracts.py.


def uniform_flow(dx: float, dy: float, pairs: int = 1, size: int = 8) -> np.ndarray:
    """One clip whose every pixel moves by (dx, dy). Shape: (1, pairs, size, size, 2)."""
    flow = np.zeros((1, pairs, size, size, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def describe(config: HoofVariantConfig, flows: np.ndarray, ctx) -> np.ndarray:
    return HoofVariantDescriptor(config).describe(None, flows, ctx)


def polar(angle_degrees: float, speed: float = 2.0) -> tuple[float, float]:
    angle = math.radians(angle_degrees)
    return speed * math.cos(angle), speed * math.sin(angle)


def test_mirror_hoof_puts_left_and_right_motion_in_one_bin(ctx) -> None:
    config = MirrorHoofConfig(name="hoof_mirror")
    right, left = (
        describe(config, uniform_flow(1.5, 0.0), ctx),
        describe(config, uniform_flow(-1.5, 0.0), ctx),
    )
    np.testing.assert_array_equal(right, left)
    assert right[0, 4] == pytest.approx(1.0)  # theta = 0 opens bin 4 of [-pi/2, pi/2] in 8 bins
    up_left, up_right = (
        describe(config, uniform_flow(-1, -1), ctx),
        describe(config, uniform_flow(1, -1), ctx),
    )
    np.testing.assert_array_equal(up_left, up_right)
    up, down = describe(config, uniform_flow(0, -1), ctx), describe(config, uniform_flow(0, 1), ctx)
    assert up[0, 0] == pytest.approx(1.0) and down[0, 7] == pytest.approx(1.0)
    # The paper's full-circle HOOF tells left from right.
    full = HoofDescriptor(HoofConfig(name="hoof"))
    assert not np.array_equal(
        full.describe(None, uniform_flow(1.5, 0), ctx), full.describe(None, uniform_flow(-1.5, 0), ctx)
    )


def test_soft_assignment_splits_between_the_two_nearest_centres(ctx) -> None:
    config = SoftHoofConfig(name="hoof_soft")  # 8 bins of 45 degrees; centres at 22.5, 67.5, ...
    between = describe(config, uniform_flow(*polar(30.0)), ctx)[0]
    expected = np.zeros(8)
    expected[0], expected[1] = 1 - 7.5 / 45, 7.5 / 45
    np.testing.assert_allclose(between, expected, atol=1e-6)
    at_centre = describe(config, uniform_flow(*polar(67.5)), ctx)[0]
    assert at_centre[1] == pytest.approx(1.0, abs=1e-6)
    # Across 0 degrees the circle wraps: 5 degrees lies between the centres 337.5 (bin 7) and 22.5 (bin 0).
    wrapped = describe(config, uniform_flow(*polar(5.0)), ctx)[0]
    assert wrapped[7] == pytest.approx(17.5 / 45, abs=1e-6)
    assert wrapped[0] == pytest.approx(27.5 / 45, abs=1e-6)


def test_soft_mirror_does_not_wrap_straight_up_into_straight_down(ctx) -> None:
    config = MirrorHoofConfig(name="hoof_mirror", assignment="soft")
    up = describe(config, uniform_flow(0.0, -1.0), ctx)[0]
    assert up[0] == pytest.approx(1.0) and up[1:].sum() == pytest.approx(0.0)


def test_static_bin_catches_tiny_flow(ctx) -> None:
    config = StaticBinHoofConfig(name="hoof_static")  # threshold 0.1 px
    tiny = describe(config, uniform_flow(0.01, 0.02), ctx)[0]
    assert tiny.shape == (9,)
    assert tiny[0] == pytest.approx(1.0) and tiny[1:].sum() == pytest.approx(0.0)
    half = uniform_flow(1.0, 0.0)
    half[..., :4, :, :] = 0.001  # the top half barely moves
    mixed = describe(config, half, ctx)[0]
    assert mixed[0] == pytest.approx(0.5) and mixed[1] == pytest.approx(0.5)
    # Without the static bin, the same tiny flow still fills orientation bins.
    assert describe(HoofVariantConfig(name="x"), uniform_flow(0.01, 0.02), ctx)[0].sum() == pytest.approx(1.0)


def test_fully_static_clip_is_finite_in_every_variant(ctx) -> None:
    still = np.zeros((2, 4, 8, 8, 2), dtype=np.float32)
    for config in (
        MirrorHoofConfig(name="a"),
        SoftHoofConfig(name="b"),
        GridHoofConfig(name="c"),
        PyramidHoofConfig(name="d"),
        OrientationMagnitudeHoofConfig(name="e"),
        HoofVariantConfig(name="f", normalize="l2"),
    ):
        out = describe(config, still, ctx)
        assert np.isfinite(out).all() and not out.any()
    static_bin = describe(StaticBinHoofConfig(name="g"), still, ctx)
    np.testing.assert_array_equal(static_bin[:, 0], 1.0)


def test_grid_separates_zoom_from_rotation_where_global_hoof_cannot(ctx) -> None:
    config = SyntheticConfig(size=32, num_frames=4)
    _, zoom = render_clip("zoom_in", np.random.default_rng(0), config)
    _, rotation = render_clip("rotation_cw", np.random.default_rng(0), config)
    flows = np.stack([zoom, rotation])  # the exact flow of both patterns

    def cosine(pair: np.ndarray) -> float:
        return float(pair[0] @ pair[1] / (np.linalg.norm(pair[0]) * np.linalg.norm(pair[1])))

    assert cosine(HoofDescriptor(HoofConfig(name="hoof")).describe(None, flows, ctx)) > 0.99
    grid = describe(GridHoofConfig(name="hoof_grid"), flows, ctx)
    assert grid.shape == (2, 4 * 8)
    assert cosine(grid) < 0.05
    # Top-left cell: zoom moves up-left (angle 225 deg, bin 5), clockwise rotation up-right (315 deg, bin 7).
    assert np.argmax(grid[0, :8]) == 5 and np.argmax(grid[1, :8]) == 7


def test_temporal_pyramid_keeps_the_order_of_motions(ctx) -> None:
    flows = np.concatenate([uniform_flow(1.0, 0.0, pairs=2), uniform_flow(-1.0, 0.0, pairs=2)], axis=1)
    out = describe(PyramidHoofConfig(name="hoof_pyramid", pyramid_levels=2), flows, ctx)[0]
    assert out.shape == (3 * 8,)  # 1 + 2 segments
    blocks = out.reshape(3, 8) * 3  # L1 over 3 blocks
    np.testing.assert_allclose(blocks[0, [0, 4]], [0.5, 0.5], atol=1e-6)  # whole clip: both directions
    assert blocks[1, 0] == pytest.approx(1.0) and blocks[2, 4] == pytest.approx(1.0)


def test_pyramid_segments_cover_the_pairs() -> None:
    segments = pyramid_segments(15, 3)
    assert len(segments) == 7 and segments[0] == (0, 15)
    assert segments[3:] == [(0, 3), (3, 7), (7, 11), (11, 15)]
    assert all(stop > start for start, stop in pyramid_segments(2, 3))


def test_orientation_magnitude_bins(ctx) -> None:
    config = OrientationMagnitudeHoofConfig(name="hoof_orientation_magnitude")  # edges 0.5, 1.0, 1.5
    slow, fast = (
        describe(config, uniform_flow(0.3, 0.0), ctx)[0],
        describe(config, uniform_flow(2.0, 0.0), ctx)[0],
    )
    assert slow.shape == (32,)
    assert slow[0] == pytest.approx(1.0)  # orientation 0, speed range 0
    assert fast[3] == pytest.approx(1.0)  # orientation 0, speed range 3
    down = describe(config, uniform_flow(0.0, 1.2), ctx)[0]
    assert down[2 * 4 + 2] == pytest.approx(1.0)  # orientation 2 (90 deg), speed range 2


def test_hard_full_circle_variant_equals_the_papers_hoof(ctx) -> None:
    flows = small_corpus().train.gt_flow
    paper = HoofDescriptor(HoofConfig(name="hoof", bins=8)).describe(None, flows, ctx)
    variant = describe(HoofVariantConfig(name="x", bins=8), flows, ctx)
    np.testing.assert_allclose(variant, paper, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"orientation": "half"}, "orientation"),
        ({"assignment": "fuzzy"}, "assignment"),
        ({"weight": "area"}, "weight"),
        ({"grid": 0}, "grid"),
        ({"pyramid_levels": 0}, "pyramid_levels"),
        ({"static_threshold": -0.1}, "static_threshold"),
        ({"magnitude_edges": [1.0, 0.5]}, "magnitude_edges"),
        ({"bins": 0}, "bins"),
        ({"normalize": "max"}, "normalize"),
    ],
)
def test_bad_values_are_rejected(fields: dict, field_name: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        HoofVariantDescriptor(HoofVariantConfig(name="x", **fields))
    assert raised.value.field == field_name


def test_bad_value_names_the_group(host) -> None:
    with pytest.raises(ConfigValueError, match=r"descriptor\.orientation='half'.*mirror"):
        host.build("descriptor", {"name": "hoof_grid", "orientation": "half"})


def test_grid_larger_than_the_frame_is_refused_when_describing(ctx) -> None:
    with pytest.raises(ConfigValueError, match=r"descriptor\.grid=9.*frame side \(8 px\)"):
        describe(GridHoofConfig(name="hoof_grid", grid=9), uniform_flow(1.0, 0.0), ctx)
