"""DIS and TV-L1 estimators: contracts, config validation, accuracy on pans, the missing-contrib error."""

from __future__ import annotations

import numpy as np
import pytest
from mwga_plugins.motion import tvl1 as tvl1_module
from mwga_plugins.motion.dis import DisConfig, DisFlow
from mwga_plugins.motion.tvl1 import Tvl1Config, Tvl1Flow, opencv_has_tvl1

from mwga_core.api.errors import ConfigValueError, MwgaUserError
from mwga_core.api.motion import to_grey
from mwga_core.testing import MotionEstimatorContract, small_corpus


# The default config runs through the contract in tests/plugins/test_contracts.py; here another preset.
class TestDisFlowUltrafast(MotionEstimatorContract):
    component_class = DisFlow
    config = DisConfig(name="dis", preset="ultrafast")


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"preset": "slow"}, "preset"),
        ({"finest_scale": -1}, "finest_scale"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 8, "patch_stride": 8}, "patch_stride"),
        ({"variational_refinement_alpha": -1.0}, "variational_refinement_alpha"),
        ({"variational_refinement_gamma": -0.5}, "variational_refinement_gamma"),
    ],
)
def test_dis_rejects_bad_values(fields: dict, field_name: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        DisFlow(DisConfig(name="dis", **fields))
    assert raised.value.field == field_name


def test_dis_bad_value_names_the_group(host) -> None:
    with pytest.raises(ConfigValueError, match=r"motion\.preset='slow'.*ultrafast"):
        host.build("motion", {"name": "dis", "preset": "slow"})


def test_dis_overrides_only_the_fields_given() -> None:
    import cv2

    preset = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    dis = DisFlow(DisConfig(name="dis", preset="fast", finest_scale=0, use_spatial_propagation=False))
    made = dis.make_opencv_estimator()
    assert made.getFinestScale() == 0 != preset.getFinestScale()
    assert made.getUseSpatialPropagation() is False
    assert made.getPatchSize() == preset.getPatchSize()
    assert made.getGradientDescentIterations() == preset.getGradientDescentIterations()


def test_dis_pair_and_batch_agree(ctx) -> None:
    frames = small_corpus(size=32).train.frames[:2]
    dis = DisFlow(DisConfig(name="dis"))
    batch = dis.estimate(frames, ctx)
    grey = to_grey(frames)
    np.testing.assert_array_equal(dis.estimate_pair(grey[1, 2], grey[1, 3]), batch[1, 2])


@pytest.mark.parametrize("preset", ["ultrafast", "medium"])
def test_dis_recovers_pans(preset: str, ctx) -> None:
    corpus = small_corpus(size=32)
    clips = corpus.train
    pans = clips.labels == corpus.class_names.index("horizontal_pan")
    flows = DisFlow(DisConfig(name="dis", preset=preset)).estimate(clips.frames[pans], ctx)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    error = np.hypot(*np.moveaxis(flows[inner] - clips.gt_flow[pans][inner], -1, 0)).mean()
    assert error < 0.15


def test_tvl1_without_contrib_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(tvl1_module, "opencv_has_tvl1", lambda: False)
    with pytest.raises(MwgaUserError, match="pip install opencv-contrib-python-headless"):
        Tvl1Flow(Tvl1Config(name="tvl1"))


@pytest.mark.skipif(opencv_has_tvl1(), reason="this OpenCV has contrib; the real error path cannot occur")
def test_tvl1_build_fails_cleanly_in_this_environment(host) -> None:
    from mwga_core.cli.main import main

    with pytest.raises(MwgaUserError, match="cv2.optflow"):
        host.build("motion", {"name": "tvl1"})
    assert main(["flow-eval", "--estimators", "tvl1", "--clips", "6"]) == 2


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [({"median_filtering": 4}, "median_filtering"), ({"scale_step": 1.0}, "scale_step"), ({"tau": 0}, "tau")],
)
def test_tvl1_rejects_bad_values_before_looking_for_contrib(fields: dict, field_name: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        Tvl1Flow(Tvl1Config(name="tvl1", **fields))
    assert raised.value.field == field_name


@pytest.mark.skipif(not opencv_has_tvl1(), reason="needs opencv-contrib (cv2.optflow)")
def test_tvl1_recovers_pans(ctx) -> None:
    corpus = small_corpus(size=32)
    clips = corpus.train
    pans = clips.labels == corpus.class_names.index("horizontal_pan")
    flows = Tvl1Flow(Tvl1Config(name="tvl1")).estimate(clips.frames[pans], ctx)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    error = np.hypot(*np.moveaxis(flows[inner] - clips.gt_flow[pans][inner], -1, 0)).mean()
    assert error < 0.3
