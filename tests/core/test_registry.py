"""Registries and the registrar: validation of entries, duplicates, unknown names, error prefixing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mwga_core import hookimpl
from mwga_core.api.errors import (
    ConfigNameTakenError,
    ConfigValueError,
    DuplicateComponentError,
    UnknownComponentError,
)
from mwga_core.plugin_host.registry import ComponentConfig, ComponentKind, Registrar, Registry


class Widget:
    """The abstract base of a made-up kind."""

    def __init__(self, config: WidgetConfig) -> None:
        if config.size < 1:
            raise ConfigValueError("size", config.size, "an integer >= 1")
        self.config = config


@dataclass
class WidgetConfig(ComponentConfig):
    size: int = 3


class RoundWidget(Widget):
    pass


class NotAWidget:
    def __init__(self, config: WidgetConfig) -> None:
        self.config = config


@dataclass
class NotAComponentConfig:
    size: int = 3


class PlainConfig(ComponentConfig):  # a subclass, but not itself decorated as a dataclass
    size = 3


@pytest.fixture
def registry() -> Registry:
    return Registry(ComponentKind("widget", "widgets", "mwga_register_widgets", Widget))


def test_valid_entry_is_recorded_with_its_plugin(registry: Registry) -> None:
    register = Registrar(registry, "shop")
    register("round", RoundWidget, WidgetConfig, description="a round one")
    spec = registry.get("round")
    assert (spec.plugin, spec.component, spec.config, spec.description) == (
        "shop",
        RoundWidget,
        WidgetConfig,
        "a round one",
    )
    assert spec.default_config() == WidgetConfig(name="round", size=3)
    assert register.registered == ["round"]


@pytest.mark.parametrize("name", ["Round", "2round", "round-widget", "", "round widget", None])
def test_bad_names_are_refused(registry: Registry, name: object) -> None:
    with pytest.raises(TypeError, match="shop.*the name must match"):
        Registrar(registry, "shop")(name, RoundWidget, WidgetConfig)
    assert registry.names() == []


@pytest.mark.parametrize("component", [NotAWidget, RoundWidget(WidgetConfig()), "RoundWidget"])
def test_component_must_subclass_the_kinds_base(registry: Registry, component: object) -> None:
    with pytest.raises(TypeError, match=r"plugin 'shop' registering widget 'round'.*subclass of Widget"):
        Registrar(registry, "shop")("round", component, WidgetConfig)
    assert registry.names() == []


@pytest.mark.parametrize("config", [NotAComponentConfig, PlainConfig, WidgetConfig(), dict])
def test_config_must_be_a_component_config_dataclass(registry: Registry, config: object) -> None:
    with pytest.raises(TypeError, match="dataclass subclassing ComponentConfig"):
        Registrar(registry, "shop")("round", RoundWidget, config)
    assert registry.names() == []


def test_duplicate_name_names_both_plugins_and_the_first_keeps_it(registry: Registry) -> None:
    Registrar(registry, "first_shop")("round", RoundWidget, WidgetConfig)
    with pytest.raises(DuplicateComponentError) as raised:
        Registrar(registry, "second_shop")("round", RoundWidget, WidgetConfig)
    assert raised.value.plugins == ("first_shop", "second_shop")
    assert "first_shop" in str(raised.value) and "second_shop" in str(raised.value)
    # The refused registration changes nothing: the holder's entry still resolves and builds.
    assert registry.get("round").plugin == "first_shop"
    assert isinstance(registry.build({"name": "round"}), RoundWidget)


def test_a_name_taken_by_a_config_file_is_refused(registry: Registry) -> None:
    files = Registry(registry.kind, {"motion_recipe": "conf/widgets/motion_recipe.yaml"})
    with pytest.raises(ConfigNameTakenError) as raised:
        Registrar(files, "shop")("motion_recipe", RoundWidget, WidgetConfig)
    message = str(raised.value)
    assert (
        "'motion_recipe'" in message and "conf/widgets/motion_recipe.yaml" in message and "'shop'" in message
    )
    assert files.names() == []
    Registrar(files, "shop")("round", RoundWidget, WidgetConfig)  # other names stay free
    assert files.names() == ["round"]


def test_unknown_name_lists_the_known_names(registry: Registry) -> None:
    Registrar(registry, "shop")("round", RoundWidget, WidgetConfig)
    Registrar(registry, "shop")("square", RoundWidget, WidgetConfig)
    with pytest.raises(UnknownComponentError) as raised:
        registry.get("rund")
    assert raised.value.known == ["round", "square"]
    assert "'rund'" in str(raised.value) and "round, square" in str(raised.value)


def test_unknown_name_in_an_empty_registry_says_none_are_registered(registry: Registry) -> None:
    with pytest.raises(UnknownComponentError, match=r"\(none registered\)"):
        registry.get("round")


def test_build_prefixes_the_config_group_to_the_field(registry: Registry) -> None:
    Registrar(registry, "shop")("round", RoundWidget, WidgetConfig)
    with pytest.raises(ConfigValueError) as raised:
        registry.build({"name": "round", "size": 0})
    assert raised.value.field == "widgets.size"
    assert str(raised.value).startswith("widgets.size=0 is not allowed: expected an integer >= 1")


def test_build_fills_defaults_and_accepts_typed_configs(registry: Registry) -> None:
    Registrar(registry, "shop")("round", RoundWidget, WidgetConfig)
    built = registry.build({"name": "round"})
    assert isinstance(built, RoundWidget) and built.config == WidgetConfig(name="round", size=3)
    typed = WidgetConfig(name="round", size=7)
    assert registry.build(typed).config is typed


def test_remove_plugin_forgets_only_that_plugins_entries(registry: Registry) -> None:
    Registrar(registry, "shop")("round", RoundWidget, WidgetConfig)
    Registrar(registry, "other")("square", RoundWidget, WidgetConfig)
    registry.remove_plugin("shop")
    assert registry.names() == ["square"]


# -- the same rules through the real plugin host --------------------------------------------------


class DuplicateHoof:
    @hookimpl
    def mwga_register_descriptors(self, register):
        from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor

        register("hoof", HoofDescriptor, HoofConfig)


def test_host_duplicate_fails_the_newcomer_and_the_builtin_keeps_the_name(host) -> None:
    record = host.add_plugin(DuplicateHoof(), "copycat")
    assert record.status == "failed"
    assert "DuplicateComponentError" in record.error and "'hoof'" in record.error
    assert "copycat" in record.error and "mwga " in record.error  # the holder's distribution
    assert host.registry("descriptor").get("hoof").plugin == "hoof"
    assert host.build("descriptor", {"name": "hoof"}).config.bins == 8
    assert host.registry("descriptor").get("appearance").plugin == "appearance"


def test_host_unknown_name_lists_every_builtin(host) -> None:
    with pytest.raises(UnknownComponentError) as raised:
        host.build("descriptor", {"name": "hof"})
    assert {"hoof", "appearance", "flow_magnitude"} <= set(raised.value.known)


def test_host_build_prefixes_the_group_not_the_kind_name(host) -> None:
    # the projector kind's config group is `projection`, and the message must use the group
    with pytest.raises(ConfigValueError) as raised:
        host.build("projection", {"name": "gaussian", "dim": 0})
    assert raised.value.field == "projection.dim"


def test_host_registry_of_unknown_group(host) -> None:
    with pytest.raises(KeyError, match="descriptors"):
        host.registry("descriptors")
