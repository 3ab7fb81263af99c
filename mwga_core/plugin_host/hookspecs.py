"""The contract between mwga and its plugins: one hook per component kind, and one for subcommands.

Every hook receives a ``register`` callback (a :class:`mwga_core.plugin_host.registry.Registrar`). A plugin calls
``register(name, component_class, config_class, description=...)`` once per component it provides; the
core validates each entry and records which plugin provided it. Built-in components use these hooks
through the same ``mwga`` entry-point group as third-party packages.

Implement a hook with the :data:`mwga_core.hookimpl` marker::

    from mwga_core import hookimpl

    @hookimpl
    def mwga_register_descriptors(register):
        register("my_descriptor", MyDescriptor, MyDescriptorConfig, description="...")
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "mwga"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def mwga_register_datasets(register):
    """Register datasets: sources of training clips and query clips (config group ``dataset``)."""


@hookspec
def mwga_register_motion_estimators(register):
    """Register motion estimators: frames to dense optical flow (config group ``motion``)."""


@hookspec
def mwga_register_descriptors(register):
    """Register descriptors: frames and flow to one vector per clip (config group ``descriptor``)."""


@hookspec
def mwga_register_gradient_sources(register):
    """Register gradient sources: per-clip (motion-weighted) gradients (config group ``gradient``)."""


@hookspec
def mwga_register_projectors(register):
    """Register projectors: seeded random maps from gradient space to P dims (config group ``projection``)."""


@hookspec
def mwga_register_scorers(register):
    """Register scorers: query and training features to influence scores (config group ``scorer``)."""


@hookspec
def mwga_register_models(register):
    """Register model adapters: trainable diffusion models that gradients are taken of (config group ``model``)."""


@hookspec
def mwga_register_commands(register):
    """Register subcommands: ``register(name, function, help=...)`` makes ``mwga <name> args`` call ``function(args)``."""
