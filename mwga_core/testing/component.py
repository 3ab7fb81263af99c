"""The checks every component passes, whatever its kind (:class:`ComponentContract`).

Each kind's contract (:mod:`mwga_core.testing.contracts`) subclasses it; a plugin author subclasses the
kind's contract and sets ``component_class`` (and optionally ``config``, ``plugin``, ``registered_name``).
The common checks: the hook registers the component in a fresh :class:`PluginHost` (exactly as an
installed entry point would be), every config field has a default and survives OmegaConf (what Hydra does
to it), every range a field declares (:mod:`mwga_core.config.checks`) is enforced when the component is
built, and the component builds from its config.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from omegaconf import OmegaConf

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.config.checks import declared_checks
from mwga_core.plugin_host.host import PluginHost
from mwga_core.plugin_host.registry import ComponentConfig, ComponentSpec, as_config_object
from mwga_core.testing.inputs import make_context

#: the plugin name the contracts register the component's hook module under
CONTRACT_PLUGIN_NAME = "contract-under-test"


class ComponentContract:
    """Checks every component kind shares: registration, config schema, construction."""

    #: config group of the kind (set by each kind's contract)
    group: ClassVar[str] = ""
    component_class: ClassVar[type | None] = None
    config: ClassVar[ComponentConfig | None] = None
    plugin: ClassVar[Any] = None
    registered_name: ClassVar[str | None] = None

    @pytest.fixture
    def ctx(self, tmp_path: Path) -> RunContext:
        return make_context(tmp_path)

    # helpers (not tests) -----------------------------------------------------------------------
    def plugin_object(self) -> Any:
        """The object whose hook implementations register the component."""
        if self.component_class is None:
            raise AssertionError(f"{type(self).__name__}: set component_class = <your component class>")
        if self.plugin is not None:
            return self.plugin
        return sys.modules[self.component_class.__module__]

    def register(self) -> tuple[PluginHost, ComponentSpec]:
        """Register the plugin in a fresh host; return it with the component's entry."""
        host = PluginHost()
        record = host.add_plugin(self.plugin_object(), CONTRACT_PLUGIN_NAME)
        assert record.status == "loaded", f"the plugin failed to register: {record.error}"
        specs = [
            spec
            for spec in host.registry(self.group).specs()
            if spec.component is self.component_class
            and (self.registered_name is None or spec.name == self.registered_name)
        ]
        assert specs, (
            f"{self.plugin_object()!r} registered no {self.group} with class {self.component_class!r}"
            f" (registered: {record.registered}); set `plugin` to the module holding the @hookimpl"
        )
        return host, specs[0]

    def make_config(self) -> ComponentConfig:
        """The config under test, with ``name`` set to the registered name."""
        _, spec = self.register()
        config = self.config if self.config is not None else spec.default_config()
        assert isinstance(config, spec.config), (
            f"config is a {type(config).__name__}, but the component was registered with {spec.config.__name__}"
        )
        return dataclasses.replace(config, name=spec.name)

    def make_component(self) -> Any:
        """Build the component the way the pipeline does (through the registry)."""
        host, _ = self.register()
        return host.registry(self.group).build(self.make_config())

    # tests -------------------------------------------------------------------------------------
    def test_registers_through_hook(self) -> None:
        _, spec = self.register()
        assert spec.plugin == CONTRACT_PLUGIN_NAME
        assert spec.description.strip(), "register(...) should pass a one-line description="

    def test_config_fields_have_defaults(self) -> None:
        _, spec = self.register()
        for config_field in dataclasses.fields(spec.config):
            if config_field.name == "name":
                continue
            has_default = (
                config_field.default is not dataclasses.MISSING
                or config_field.default_factory is not dataclasses.MISSING
            )
            assert has_default, f"{spec.config.__name__}.{config_field.name} has no default"
            assert getattr(spec.default_config(), config_field.name) != "???", (
                f"{spec.config.__name__}.{config_field.name} is MISSING ('???'); give it a real default"
            )

    def test_config_survives_omegaconf(self) -> None:
        _, spec = self.register()
        config = self.make_config()
        node = OmegaConf.structured(config)
        assert as_config_object(node, spec.config) == config
        with pytest.raises(Exception):  # noqa: B017 - OmegaConf raises several types for unknown keys
            OmegaConf.merge(OmegaConf.structured(spec.config), {"no_such_field_xyz": 1})

    def test_builds_from_config(self) -> None:
        component = self.make_component()
        assert isinstance(component, self.component_class)
        assert type(component).__name__ in repr(component)

    def test_declared_field_checks_are_enforced(self) -> None:
        """A value a field's declared check refuses fails the build, naming ``<group>.<field>``."""
        host, spec = self.register()
        for name, check, _ in declared_checks(spec.config):
            if check.refused is None:
                continue
            bad = dataclasses.replace(self.make_config(), **{name: check.refused})
            with pytest.raises(ConfigValueError, match=rf"^{self.group}\.{name}="):
                host.registry(self.group).build(bad)
