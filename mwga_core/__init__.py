"""mwga: Motion-Weighted Gradient Attribution for video generative models.

Plugins implement the hooks in :mod:`mwga_core.plugin_host.hookspecs` with the :data:`hookimpl` marker.
"""

from mwga_core.plugin_host.hookspecs import hookimpl

__all__ = ["hookimpl", "__version__"]
__version__ = "0.1.0"
