"""Tests of the example plugin: mwga's contract kit, then what the descriptor itself promises."""

from __future__ import annotations

import math

import mwga_divergence_curl
import numpy as np
import pytest
from mwga_divergence_curl import DivergenceCurlConfig, DivergenceCurlDescriptor, affine_flow_fit

from mwga_core.testing import DescriptorContract, make_context


# The contract kit: registration through the hook, config defaults, shapes, determinism, static clips.
class TestDivergenceCurlContract(DescriptorContract):
    component_class = DivergenceCurlDescriptor
    plugin = mwga_divergence_curl  # the @hookimpl lives in the package, not in descriptor.py


class TestDivergenceCurlWithoutTranslation(DescriptorContract):
    component_class = DivergenceCurlDescriptor
    plugin = mwga_divergence_curl
    config = DivergenceCurlConfig(include_translation=False, include_shear=False)


def affine_flow(size: int, matrix: np.ndarray, shift: tuple[float, float], pairs: int = 3) -> np.ndarray:
    """The exact flow ``M x + t`` about the centre, for ``pairs`` frame pairs of one clip: (1, pairs, H, W, 2)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2.0
    u = matrix[0, 0] * xs + matrix[0, 1] * ys + shift[0]
    v = matrix[1, 0] * xs + matrix[1, 1] * ys + shift[1]
    flow = np.stack([u, v], axis=-1).astype(np.float32)
    return np.broadcast_to(flow, (1, pairs, size, size, 2)).copy()


def describe(flows: np.ndarray, **config) -> np.ndarray:
    descriptor = DivergenceCurlDescriptor(DivergenceCurlConfig(name="divergence_curl", **config))
    frames = np.zeros((*flows.shape[:2], *flows.shape[2:4], 1), dtype=np.float32)
    return descriptor.describe(frames, flows, make_context())[0]


def test_fit_recovers_an_affine_field_exactly():
    flows = affine_flow(16, np.array([[0.1, -0.2], [0.3, 0.05]]), (1.5, -0.5))
    fitted = affine_flow_fit(flows)[0, 0]
    np.testing.assert_allclose(fitted, [1.5, 0.1, -0.2, -0.5, 0.3, 0.05], atol=1e-6)


def test_zoom_in_is_pure_positive_divergence():
    a0, b0, divergence, curl, stretch, skew = describe(affine_flow(16, 0.04 * np.eye(2), (0, 0)))
    assert divergence == pytest.approx(2 * 0.04 * 7.5, rel=1e-5)  # scaled to the edge, 7.5 px away
    assert max(abs(a0), abs(b0), abs(curl), abs(stretch), abs(skew)) < 1e-5


def test_clockwise_rotation_is_positive_curl():
    theta = math.radians(3)
    step = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    _, _, divergence, curl, _, _ = describe(affine_flow(16, step - np.eye(2), (0, 0)), scale_to_edge=False)
    assert curl == pytest.approx(2 * math.sin(theta), rel=1e-5)
    # a rotation matrix minus I also has a small negative trace: 2 (cos - 1)
    assert divergence == pytest.approx(2 * (math.cos(theta) - 1), rel=1e-4)


def test_pan_is_translation_only():
    a0, b0, *linear = describe(affine_flow(16, np.zeros((2, 2)), (1.25, 0.0)))
    assert (a0, b0) == pytest.approx((1.25, 0.0), abs=1e-6)
    assert np.abs(linear).max() < 1e-6


def test_config_fields_choose_the_parts():
    flows = affine_flow(16, np.zeros((2, 2)), (1.0, 0.0))
    assert describe(flows).shape == (6,)
    assert describe(flows, include_translation=False).shape == (4,)
    assert describe(flows, include_translation=False, include_shear=False).shape == (2,)
