"""Component registries: one per component kind, filled by plugins through a typed registrar.

A :class:`Registry` maps names to :class:`ComponentSpec` entries. Plugins never touch it directly: each
registration hook receives a :class:`Registrar` bound to the calling plugin, so the core validates every
entry and records who provided it. A name is taken by whoever registered it first (mwga's own plugins load
first) or by a config file of the kind's group (``conf/gradient/diffusion_motion.yaml`` takes
``gradient=diffusion_motion``); registering a taken name raises and leaves the registry as it was, so the
host can drop the newcomer whole while the holder keeps working.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mwga_core.api.errors import (
    ConfigNameTakenError,
    ConfigValueError,
    DuplicateComponentError,
    UnknownComponentError,
)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class ComponentConfig:
    """Base of every component's config schema (a dataclass stored in Hydra's ConfigStore).

    ``name`` is filled by the core with the registered name; subclasses add their own fields, each
    with a default, so that a typo in an override fails at composition time.
    """

    name: str = "???"


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component: its config group, its registration hook and its abstract base class."""

    name: str
    group: str
    hook: str
    base: type


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component."""

    kind: str
    name: str
    component: type
    config: type[ComponentConfig]
    plugin: str
    description: str

    def default_config(self) -> ComponentConfig:
        """The config schema instance with its defaults and ``name`` filled in."""
        return self.config(name=self.name)


class Registry:
    """Named components of one kind.

    Args:
        kind: the component kind this registry holds.
        config_files: option names of the kind's config group that config files already provide, each
            mapped to the file (``{"diffusion_motion": "mwga_conf/gradient/diffusion_motion.yaml"}``);
            no component may be registered under them.
    """

    def __init__(self, kind: ComponentKind, config_files: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.config_files = dict(config_files or {})
        self._specs: dict[str, ComponentSpec] = {}

    def add(self, spec: ComponentSpec) -> None:
        """Add an entry; a taken name raises and changes nothing (the holder keeps the name)."""
        if spec.name in self.config_files:
            raise ConfigNameTakenError(
                self.kind.name, self.kind.group, spec.name, self.config_files[spec.name], spec.plugin
            )
        existing = self._specs.get(spec.name)
        if existing is not None:
            raise DuplicateComponentError(self.kind.name, spec.name, existing.plugin, spec.plugin)
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ComponentSpec]:
        return [self._specs[name] for name in self.names()]

    def get(self, name: str) -> ComponentSpec:
        """The entry for ``name``; raises :class:`UnknownComponentError` listing the known names."""
        if name not in self._specs:
            raise UnknownComponentError(self.kind.name, name, self._specs)
        return self._specs[name]

    def build(self, config: DictConfig | ComponentConfig | Mapping[str, Any]) -> Any:
        """Instantiate the component that ``config.name`` names, validating its fields.

        A :class:`ConfigValueError` raised by the component is re-raised with the config group
        prefixed, so the message names the full field path (``descriptor.bins``).
        """
        name = config.name if isinstance(config, ComponentConfig) else config["name"]
        spec = self.get(name)
        typed = as_config_object(config, spec.config)
        try:
            return spec.component(typed)
        except ConfigValueError as error:
            raise error.under(self.kind.group) from None

    def remove_plugin(self, plugin: str) -> None:
        """Forget every entry that ``plugin`` registered (used when a plugin fails half-way)."""
        for name in [n for n, s in self._specs.items() if s.plugin == plugin]:
            del self._specs[name]


def as_config_object(config: DictConfig | ComponentConfig | Mapping[str, Any], schema: type) -> Any:
    """Turn a composed config node into an instance of its dataclass ``schema``."""
    if isinstance(config, schema):
        return config
    node = OmegaConf.merge(OmegaConf.structured(schema), config)
    return OmegaConf.to_object(node)


class Registrar:
    """The ``register`` callback a plugin receives; bound to one registry and one plugin."""

    def __init__(self, registry: Registry, plugin: str) -> None:
        self._registry = registry
        self._plugin = plugin
        self.registered: list[str] = []

    def __call__(
        self,
        name: str,
        component: type,
        config: type[ComponentConfig],
        *,
        description: str = "",
    ) -> None:
        """Register ``component`` under ``name`` with the config schema ``config``.

        Args:
            name: lower-case identifier, the option name in the config group (``descriptor=name``).
            component: a subclass of the kind's abstract base; called as ``component(config)``.
            config: a dataclass subclass of :class:`ComponentConfig` with a default for every field.
            description: one line shown by ``mwga plugins`` and in the docs.
        """
        kind = self._registry.kind
        where = f"plugin {self._plugin!r} registering {kind.name} {name!r}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise TypeError(f"{where}: the name must match {NAME_PATTERN.pattern}")
        if not (isinstance(component, type) and issubclass(component, kind.base)):
            raise TypeError(f"{where}: the component must be a subclass of {kind.base.__qualname__}")
        if not (
            isinstance(config, type)
            and dataclasses.is_dataclass(config)
            and issubclass(config, ComponentConfig)
        ):
            raise TypeError(f"{where}: the config must be a dataclass subclassing ComponentConfig")
        if "__dataclass_fields__" not in vars(config):
            # An undecorated subclass inherits its parent's fields only: its own would vanish silently.
            raise TypeError(
                f"{where}: the config must be a dataclass subclassing ComponentConfig; "
                f"decorate {config.__qualname__} with @dataclass"
            )
        spec = ComponentSpec(kind.name, name, component, config, self._plugin, description)
        self._registry.add(spec)
        self.registered.append(name)
