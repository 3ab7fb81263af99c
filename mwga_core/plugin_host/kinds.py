"""The component kinds mwga knows, in pipeline order."""

from __future__ import annotations

from mwga_core.api.datasets import Dataset
from mwga_core.api.descriptors import Descriptor
from mwga_core.api.gradients import GradientSource
from mwga_core.api.models import ModelAdapter
from mwga_core.api.motion import MotionEstimator
from mwga_core.api.projectors import Projector
from mwga_core.api.scorers import Scorer
from mwga_core.plugin_host.registry import ComponentKind

KINDS: tuple[ComponentKind, ...] = (
    ComponentKind("dataset", "dataset", "mwga_register_datasets", Dataset),
    ComponentKind("motion estimator", "motion", "mwga_register_motion_estimators", MotionEstimator),
    ComponentKind("descriptor", "descriptor", "mwga_register_descriptors", Descriptor),
    ComponentKind("gradient source", "gradient", "mwga_register_gradient_sources", GradientSource),
    ComponentKind("projector", "projection", "mwga_register_projectors", Projector),
    ComponentKind("scorer", "scorer", "mwga_register_scorers", Scorer),
    ComponentKind("model", "model", "mwga_register_models", ModelAdapter),
)

KINDS_BY_GROUP = {kind.group: kind for kind in KINDS}
