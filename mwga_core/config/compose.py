"""The one way a run config is made: Hydra composes ``conf/``, then :func:`to_typed` turns it into a
:class:`~mwga_core.config.schema.MwgaConfig` once.

Every command goes through here: ``mwga`` (``@hydra.main`` hands its composed config to
:func:`to_typed`), ``mwga index``, ``mwga model-check`` and ``mwga flow-eval`` (:func:`compose`), and
``mwga attribute``, which reads back the config an index stored (:func:`from_container`). So a config
that cannot be used fails the same way everywhere: a :class:`ConfigCompositionError` whose message is
one line naming the problem, and exit code 2, like every :class:`~mwga_core.api.errors.MwgaUserError`.

:func:`to_typed` also refuses what Hydra lets through: a key added with ``+`` that no field of its
config dataclass declares (``+descriptor.max_magnitud=1.5``), and every field range its dataclass
declares (:mod:`mwga_core.config.checks`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mwga_core.api.errors import MwgaUserError
from mwga_core.config.checks import check_fields
from mwga_core.config.schema import COMPONENT_GROUPS, MwgaConfig, register_configs
from mwga_core.plugin_host.host import PluginHost

#: the package holding the primary configs (``conf/`` in the source tree)
CONFIG_MODULE = "mwga_conf"
#: errors of Hydra and OmegaConf that mean "this config does not compose", never a bug of mwga
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException)


class ConfigCompositionError(MwgaUserError):
    """The overrides do not give a usable config: unknown option, unknown field, wrong type."""


def compose(overrides: Sequence[str], *, host: PluginHost, config_name: str = "config") -> MwgaConfig:
    """The typed config ``mwga <overrides>`` runs (``config_name``: another root config of ``conf/``).

    Raises ConfigCompositionError with a one-line message when the overrides do not compose.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs(host)
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except COMPOSITION_ERRORS as error:
        raise ConfigCompositionError(composition_message(error)) from None
    return to_typed(cfg)


def to_typed(cfg: DictConfig) -> MwgaConfig:
    """The composed config as a MwgaConfig whose component groups are their components' dataclasses.

    Refuses keys no dataclass declares, missing values and out-of-range fields, each in one line.
    """
    # `~group` leaves a group missing, or untyped when something still sets one of its fields
    for group in (key for key in cfg if key in COMPONENT_GROUPS):  # `in cfg` is False for a missing one
        if OmegaConf.is_missing(cfg, group) or not dataclasses.is_dataclass(OmegaConf.get_type(cfg, group)):
            raise ConfigCompositionError(f"{group}: no component chosen; pick one with {group}=<name>")
    _refuse_unknown_keys(cfg, "")
    _refuse_non_finite(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    try:
        typed = OmegaConf.to_object(cfg)
    except COMPOSITION_ERRORS as error:
        raise ConfigCompositionError(composition_message(error)) from None
    if not isinstance(typed, MwgaConfig):
        raise ConfigCompositionError(f"the composed config is a {type(typed).__name__}, not a MwgaConfig")
    check_fields(typed)
    return typed


def from_container(data: dict[str, Any], *, host: PluginHost) -> MwgaConfig:
    """A config stored as plain data (an index manifest's ``config``) read back through the schemas.

    Each component group is typed by the dataclass its ``name`` registered, so a stored config passes
    the same checks as a freshly composed one.
    """
    node = OmegaConf.structured(MwgaConfig)
    groups = {
        key: value for key, value in data.items() if key in COMPONENT_GROUPS and isinstance(value, dict)
    }
    try:
        for group, value in groups.items():
            schema = host.registry(group).get(value["name"]).config
            node[group] = OmegaConf.merge(OmegaConf.structured(schema), value)
        node = OmegaConf.merge(node, {key: value for key, value in data.items() if key not in groups})
    except COMPOSITION_ERRORS as error:
        raise ConfigCompositionError(composition_message(error)) from None
    return to_typed(node)


def _refuse_non_finite(value: Any, path: str) -> None:
    """No field of mwga means anything by NaN or infinity (``gradient.noise_scale=nan`` once gave
    all-zero scores and a table): every float anywhere in the config must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigCompositionError(f"{path}={value} is not allowed: expected a finite number")
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        _refuse_non_finite(
            child,
            f"{path}.{key}" if path and isinstance(key, str) else f"{path}[{key}]" if path else str(key),
        )


def _refuse_unknown_keys(node: DictConfig, path: str) -> None:
    """Hydra's ``+key=value`` adds a key to a typed node and ``~group`` empties a group; a key the
    node's dataclass lacks and a value left missing are refused here."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key, child in node.items_ex(resolve=False):
        where = f"{path}{key}"
        if known is not None and key not in known:
            raise ConfigCompositionError(unknown_field_message(where, schema))
        if OmegaConf.is_missing(node, key):
            raise ConfigCompositionError(f"{where}: no value; give it one, e.g. {where}=<option or value>")
        if isinstance(child, DictConfig):
            _refuse_unknown_keys(child, f"{where}.")


def unknown_field_message(full_key: str, schema: type) -> str:
    """``descriptor.bin: no such field in HoofConfig; its fields: bins, normalize``."""
    fields = [f.name for f in dataclasses.fields(schema) if f.name != "name"]
    listing = ", ".join(fields) if fields else "(none)"
    return f"{full_key}: no such field in {schema.__name__}; its fields: {listing}"


def composition_message(error: BaseException) -> str:
    """One line saying why Hydra or OmegaConf could not compose or type a config."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if group:
            return f"{group}={option}: no such option; options: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse an override: {_one_line(str(error).splitlines()[0])}"
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        schema = getattr(cause, "object_type", None)
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and dataclasses.is_dataclass(schema):
            return unknown_field_message(cause.full_key, schema)
        return f"{cause.full_key}: {_one_line(cause.msg.splitlines()[0])}"
    text = _one_line(str(error))
    if error.__cause__ is not None:
        text += f": {_one_line(str(error.__cause__))}"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())
