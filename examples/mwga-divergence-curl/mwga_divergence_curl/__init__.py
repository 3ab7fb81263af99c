"""mwga plugin: the ``divergence_curl`` descriptor (see :mod:`mwga_divergence_curl.descriptor`).

The entry point ``divergence_curl = "mwga_divergence_curl"`` in pyproject.toml points mwga at this
module; mwga calls the hook below with a ``register`` callback. After ``pip install``, the option
``descriptor=divergence_curl`` and its fields (``descriptor.include_translation=false``) exist without any
YAML: mwga stores the config dataclass in Hydra's ConfigStore.
"""

from mwga_core import hookimpl
from mwga_divergence_curl.descriptor import (
    DivergenceCurlConfig,
    DivergenceCurlDescriptor,
    affine_flow_fit,
)

__all__ = ["DivergenceCurlConfig", "DivergenceCurlDescriptor", "affine_flow_fit"]
__version__ = "0.1.0"


@hookimpl
def mwga_register_descriptors(register):
    register(
        "divergence_curl",
        DivergenceCurlDescriptor,
        DivergenceCurlConfig,
        description="affine flow fit: translation, divergence, curl, shear (example plugin)",
    )
