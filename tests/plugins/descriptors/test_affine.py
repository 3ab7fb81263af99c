"""The affine descriptor recovers the exact parameters of affine flow fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import SyntheticConfig, render_clip
from mwga_plugins.descriptors.affine import AffineConfig, AffineDescriptor, affine_fit, motion_components

from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import DescriptorContract


# The default config runs through the contract in tests/plugins/test_contracts.py; here the other pooling.
class TestAffineDescriptorMeanStd(DescriptorContract):
    component_class = AffineDescriptor
    config = AffineConfig(name="affine", pooling="mean_std", normalize="l2")


def affine_flow(params: tuple[float, ...], height: int = 12, width: int = 16) -> np.ndarray:
    """u = a0 + a1 x + a2 y, v = b0 + b1 x + b2 y about the centre, y down. Shape: (H, W, 2)."""
    a0, a1, a2, b0, b1, b2 = params
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= (width - 1) / 2
    ys -= (height - 1) / 2
    return np.stack([a0 + a1 * xs + a2 * ys, b0 + b1 * xs + b2 * ys], axis=-1)


def test_fit_recovers_exact_parameters() -> None:
    params = (0.7, 0.03, -0.02, -1.1, 0.05, 0.01)
    np.testing.assert_allclose(affine_fit(affine_flow(params)), params, atol=1e-12)
    # Normalised coordinates: the linear terms are the flow they add at the frame's edge.
    normalised = affine_fit(affine_flow(params), "normalised")
    np.testing.assert_allclose(
        normalised, [0.7, 0.03 * 7.5, -0.02 * 5.5, -1.1, 0.05 * 7.5, 0.01 * 5.5], atol=1e-12
    )


def test_components_of_translation_zoom_and_rotation() -> None:
    pan = motion_components(affine_fit(affine_flow((1.5, 0, 0, -0.5, 0, 0))))
    np.testing.assert_allclose(pan, [1.5, -0.5, 0, 0, 0, 0], atol=1e-12)
    zoom = motion_components(affine_fit(affine_flow((0, 0.04, 0, 0, 0, 0.04))))
    np.testing.assert_allclose(zoom, [0, 0, 0.08, 0, 0, 0], atol=1e-12)
    shear = motion_components(affine_fit(affine_flow((0, 0.02, 0, 0, 0, -0.02))))
    np.testing.assert_allclose(shear, [0, 0, 0, 0, 0.04, 0], atol=1e-12)


def test_benchmark_patterns_give_the_documented_signs(ctx) -> None:
    config = SyntheticConfig(size=32, num_frames=4, rotation_deg=[3.0, 3.0], zoom_rate=[0.04, 0.04])
    rng = np.random.default_rng(0)
    flows = np.stack([render_clip(p, rng, config)[1] for p in ("rotation_cw", "zoom_in", "horizontal_pan")])
    out = AffineDescriptor(AffineConfig(name="affine", coordinates="pixels")).describe(None, flows, ctx)
    rotation, zoom, pan = out.astype(np.float64)
    # Clockwise on screen with y down: positive curl, 2 sin(theta); 2 (cos(theta) - 1) of divergence.
    theta = math.radians(3.0)
    assert rotation[3] == pytest.approx(2 * math.sin(theta), rel=1e-5)
    assert rotation[2] == pytest.approx(2 * (math.cos(theta) - 1), abs=1e-6)
    assert zoom[2] == pytest.approx(0.08, rel=1e-5) and abs(zoom[3]) < 1e-6
    assert pan[0] > 0.4 and abs(pan[1]) < 1e-6 and np.abs(pan[2:]).max() < 1e-6


def test_static_clip_gives_zeros_and_pooling_sizes(ctx) -> None:
    still = np.zeros((3, 4, 8, 8, 2), dtype=np.float32)
    out = AffineDescriptor(AffineConfig(name="affine", pooling="mean_std", normalize="l2")).describe(
        None, still, ctx
    )
    assert out.shape == (3, 12) and np.isfinite(out).all() and not out.any()


def test_mean_std_tells_steady_from_erratic_motion(ctx) -> None:
    steady = np.stack([affine_flow((1, 0, 0, 0, 0, 0))] * 4)
    erratic = np.stack([affine_flow((s, 0, 0, 0, 0, 0)) for s in (1, -1, 1, -1)])
    out = AffineDescriptor(AffineConfig(name="affine", pooling="mean_std")).describe(
        None, np.stack([steady, erratic]), ctx
    )
    assert out[0, 6] == pytest.approx(0.0) and out[1, 6] == pytest.approx(1.0)


@pytest.mark.parametrize("field_name", ["coordinates", "pooling", "normalize"])
def test_bad_values_are_rejected(field_name: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        AffineDescriptor(AffineConfig(name="affine", **{field_name: "bogus"}))
    assert raised.value.field == field_name
