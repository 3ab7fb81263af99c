"""Test kit for plugin authors: subclass a contract, name it ``Test...``, and pytest runs its checks.

Example (in your package's ``tests/test_my_descriptor.py``)::

    from mwga_core.testing import DescriptorContract
    from my_package import MyDescriptor, MyDescriptorConfig
    import my_package


    class TestMyDescriptor(DescriptorContract):
        component_class = MyDescriptor
        config = MyDescriptorConfig(bins=4)  # optional: the registered defaults otherwise
        plugin = my_package  # optional: the module with the @hookimpl, if not the component's module

Pytest collects only classes whose names start with ``Test``; the contracts themselves are never
collected. mwga's built-in components are tested with the same classes (``tests/plugins/test_contracts.py``).
This subpackage imports pytest, so import it from tests only. Its modules:

* :mod:`~mwga_core.testing.component`: the checks every component passes (``ComponentContract``);
* :mod:`~mwga_core.testing.contracts`: one contract per component kind;
* :mod:`~mwga_core.testing.inputs`: tiny moving clips with exact flow, features and a quiet run context,
  rendered by the kit itself (it needs no built-in plugin).
"""

from mwga_core.testing.contracts import (
    ComponentContract,
    DatasetContract,
    DescriptorContract,
    GradientSourceContract,
    MotionEstimatorContract,
    ProjectorContract,
    ScorerContract,
)
from mwga_core.testing.inputs import make_context, random_features, small_analysed, small_corpus

__all__ = [
    "ComponentContract",
    "DatasetContract",
    "DescriptorContract",
    "GradientSourceContract",
    "MotionEstimatorContract",
    "ProjectorContract",
    "ScorerContract",
    "make_context",
    "random_features",
    "small_analysed",
    "small_corpus",
]
