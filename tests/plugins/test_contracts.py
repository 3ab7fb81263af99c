"""The built-in components pass the same contract kit third-party plugin authors use (mwga_core.testing)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import SyntheticConfig, SyntheticMotionBenchmark
from mwga_plugins.datasets.video_folder import VideoFolderConfig, VideoFolderDataset
from mwga_plugins.descriptors.affine import AffineDescriptor
from mwga_plugins.descriptors.appearance import AppearanceDescriptor
from mwga_plugins.descriptors.flow_magnitude import FlowMagnitudeDescriptor
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor
from mwga_plugins.descriptors.hoof_family import HoofVariantDescriptor
from mwga_plugins.gradients.none import DescriptorAsGradient
from mwga_plugins.gradients.simulated import SimulatedGradient, SimulatedGradientConfig
from mwga_plugins.motion.dis import DisFlow
from mwga_plugins.motion.farneback import FarnebackFlow
from mwga_plugins.motion.none import NoMotion
from mwga_plugins.motion.tvl1 import Tvl1Flow
from mwga_plugins.projectors.fastfood import FastfoodProjector
from mwga_plugins.projectors.gaussian import GaussianProjector
from mwga_plugins.projectors.kronecker import KroneckerProjector
from mwga_plugins.projectors.none import IdentityProjector
from mwga_plugins.projectors.rademacher import RademacherProjector
from mwga_plugins.projectors.sparse_jl import SparseJLProjector
from mwga_plugins.scorers.cosine import CosineScorer
from mwga_plugins.scorers.dot import DotScorer
from mwga_plugins.scorers.random import RandomScorer
from mwga_plugins.scorers.tracin import TracInScorer
from mwga_plugins.scorers.trak import TrakScorer

from mwga_core.plugin_host.host import BUILTIN_DISTRIBUTION, PluginHost
from mwga_core.testing import (
    ComponentContract,
    DatasetContract,
    DescriptorContract,
    GradientSourceContract,
    MotionEstimatorContract,
    ProjectorContract,
    ScorerContract,
)


def _has_opencv_contrib() -> bool:
    import cv2

    return hasattr(cv2, "optflow")


class TestSyntheticDataset(DatasetContract):
    component_class = SyntheticMotionBenchmark
    config = SyntheticConfig(num_clips=12, num_frames=4, size=16, queries_per_pattern=2)


def _video_folder_config() -> VideoFolderConfig:
    """Tiny uint8 .npy clips (4 training, 2 query) in a temp folder, for the video_folder contract."""
    root = Path(tempfile.mkdtemp(prefix="mwga-video-folder-contract-"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("queries", 2)):
        (root / split).mkdir()
        for index in range(count):
            np.save(root / split / f"clip{index}.npy", rng.integers(0, 256, (6, 20, 20), dtype=np.uint8))
    return VideoFolderConfig(
        train_dir=str(root / "train"), query_dir=str(root / "queries"), num_frames=4, size=[16]
    )


class TestVideoFolderDataset(DatasetContract):
    component_class = VideoFolderDataset
    config = _video_folder_config()


class TestFarnebackFlow(MotionEstimatorContract):
    component_class = FarnebackFlow


class TestNoMotion(MotionEstimatorContract):
    component_class = NoMotion


class TestHoofDescriptor(DescriptorContract):
    component_class = HoofDescriptor


class TestHoofDescriptorL2(DescriptorContract):
    component_class = HoofDescriptor
    config = HoofConfig(bins=16, normalize="l2")


class TestAppearanceDescriptor(DescriptorContract):
    component_class = AppearanceDescriptor


class TestFlowMagnitudeDescriptor(DescriptorContract):
    component_class = FlowMagnitudeDescriptor


class TestSimulatedGradient(GradientSourceContract):
    component_class = SimulatedGradient
    config = SimulatedGradientConfig(virtual_dim=256)


class TestDescriptorAsGradient(GradientSourceContract):
    component_class = DescriptorAsGradient


class TestGaussianProjector(ProjectorContract):
    component_class = GaussianProjector


class TestIdentityProjector(ProjectorContract):
    component_class = IdentityProjector


class TestCosineScorer(ScorerContract):
    component_class = CosineScorer


class TestRandomScorer(ScorerContract):
    component_class = RandomScorer


# -- built-ins added beside the paper's components ---------------------------------------------------


class TestDisFlow(MotionEstimatorContract):
    component_class = DisFlow


@pytest.mark.skipif(not _has_opencv_contrib(), reason="motion=tvl1 needs opencv-contrib (cv2.optflow)")
class TestTvl1Flow(MotionEstimatorContract):
    component_class = Tvl1Flow


class TestAffineDescriptor(DescriptorContract):
    component_class = AffineDescriptor


class TestHoofGrid(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_grid"


class TestHoofMirror(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_mirror"


class TestHoofOrientationMagnitude(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_orientation_magnitude"


class TestHoofPyramid(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_pyramid"


class TestHoofSoft(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_soft"


class TestHoofStatic(DescriptorContract):
    component_class = HoofVariantDescriptor
    registered_name = "hoof_static"


class TestRademacherProjector(ProjectorContract):
    component_class = RademacherProjector


class TestSparseJLProjector(ProjectorContract):
    component_class = SparseJLProjector


class TestFastfoodProjector(ProjectorContract):
    component_class = FastfoodProjector


class TestKroneckerProjector(ProjectorContract):
    component_class = KroneckerProjector


class TestDotScorer(ScorerContract):
    component_class = DotScorer


class TestTrakScorer(ScorerContract):
    component_class = TrakScorer


class TestTracInScorer(ScorerContract):
    component_class = TracInScorer


# -- every built-in goes through a contract --------------------------------------------------------

#: built-in components not run through a contract above, and why
NOT_CONTRACT_TESTED = {
    ("motion", "raft"): "needs a trained RAFT checkpoint file; tests/plugins/motion/ tests it",
    ("gradient", "diffusion"): "needs a tiny trained model; its contract class is in "
    "tests/plugins/gradients/test_diffusion_gradient.py",
}


def test_every_builtin_component_has_a_contract_test() -> None:
    host = PluginHost()
    host.load_entry_points()
    builtin = {record.name for record in host.records.values() if record.distribution == BUILTIN_DISTRIBUTION}
    covered = set()
    for value in list(globals().values()):
        if (
            isinstance(value, type)
            and value.__name__.startswith("Test")
            and issubclass(value, ComponentContract)
        ):
            _, spec = value().register()
            covered.add((value.group, spec.name))
    contract_groups = {"dataset", "motion", "descriptor", "gradient", "projection", "scorer"}
    missing = sorted(
        (group, spec.name)
        for group, registry in host.registries.items()
        if group in contract_groups
        for spec in registry.specs()
        if spec.plugin in builtin and (group, spec.name) not in covered | set(NOT_CONTRACT_TESTED)
    )
    assert not missing, f"built-in components without a contract test class in this file: {missing}"


# -- the kit catches what it promises to catch -----------------------------------------------------


def test_kit_rejects_a_descriptor_that_returns_nan(tmp_path):
    """A contract must fail on a broken component, or it proves nothing."""
    import numpy as np

    from mwga_core.testing import make_context, small_corpus

    class NanOnStatic(HoofDescriptor):
        def describe(self, frames, flows, ctx):
            sums = np.abs(flows).sum(axis=(1, 2, 3, 4), keepdims=False)[:, None]
            return (np.ones((len(frames), 2)) / sums).astype(np.float32)

    clips = small_corpus().train
    broken = NanOnStatic(HoofConfig(name="hoof"))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = broken.describe(clips.frames, np.zeros_like(clips.gt_flow), make_context(tmp_path))
    assert not np.isfinite(out).all()

    class TestBroken(DescriptorContract):
        component_class = NanOnStatic
        plugin = _single_descriptor_plugin(NanOnStatic)

    contract = TestBroken()
    contract.test_registers_through_hook()
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(AssertionError):
        contract.test_static_clip_gives_finite_descriptor(clips, make_context(tmp_path))


def test_kit_reports_a_missing_registration():
    class TestUnregistered(DescriptorContract):
        component_class = HoofDescriptor
        plugin = _single_descriptor_plugin(AppearanceDescriptor)

    with pytest.raises(AssertionError, match="registered no descriptor"):
        TestUnregistered().test_registers_through_hook()


def _single_descriptor_plugin(component):
    """A plugin object registering ``component`` as descriptor ``under_test``."""
    from mwga_core import hookimpl

    class Plugin:
        @hookimpl
        def mwga_register_descriptors(self, register):
            register("under_test", component, HoofConfig, description="test double")

    return Plugin()
