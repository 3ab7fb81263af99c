"""Loading plugins from entry points and collecting what they register.

Each entry point in the ``mwga`` group is loaded on its own: one that fails to import or to register is
recorded (distribution, version, error) and the rest keep working. Two environment variables change this:

``MWGA_STRICT_PLUGINS=1``
    raise on the first failing plugin (for plugin authors).
``MWGA_BLOCK_PLUGINS=name,other``
    skip these entry points (or every entry point of these distributions).

A plugin that registers a name already taken (by a plugin loaded before it, or by a config file of
mwga's packaged configs, ``mwga_conf/<group>/<name>.yaml``) fails like any other: the holder keeps the
name and none of the newcomer's entries are kept. mwga's own entry points load first, so a clash with a
built-in always blames the third party.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from mwga_core.api.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError
from mwga_core.plugin_host import hookspecs
from mwga_core.plugin_host.commands import COMMANDS_HOOK, CommandRegistrar, CommandRegistry
from mwga_core.plugin_host.kinds import KINDS, KINDS_BY_GROUP
from mwga_core.plugin_host.registry import Registrar, Registry

ENTRY_POINT_GROUP = "mwga"
STRICT_ENV = "MWGA_STRICT_PLUGINS"
BLOCK_ENV = "MWGA_BLOCK_PLUGINS"
BUILTIN_DISTRIBUTION = "mwga"
#: the package holding mwga's Hydra configs; its ``<group>/*.yaml`` files take their option names
CONFIG_PACKAGE = "mwga_conf"


@dataclass
class PluginRecord:
    """What ``mwga plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    status: str = "loaded"  # loaded | failed | blocked
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "error": self.error,
            "registered": self.registered,
        }


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes"}


def _blocked() -> set[str]:
    return {part.strip() for part in os.environ.get(BLOCK_ENV, "").split(",") if part.strip()}


def config_file_options(package: str = CONFIG_PACKAGE) -> dict[str, dict[str, str]]:
    """Option names that config files provide, per component group: ``{group: {name: file}}``.

    Read from the packaged configs' folders (``mwga_conf/gradient/diffusion_motion.yaml`` gives
    ``{"gradient": {"diffusion_motion": ".../diffusion_motion.yaml"}}``) without importing Hydra, so that
    loading plugins stays cheap. Groups without a folder have no file options.
    """
    try:
        root = resources.files(package)
    except ModuleNotFoundError:  # configs not installed: nothing to collide with
        return {}
    options: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        folder = root / kind.group
        if not folder.is_dir():
            continue
        files = {
            entry.name.removesuffix(".yaml"): str(entry)
            for entry in folder.iterdir()
            if entry.name.endswith(".yaml") and entry.is_file()
        }
        if files:
            options[kind.group] = files
    return options


class PluginHost:
    """Owns the pluggy manager, the registries and the record of every plugin."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        file_options = config_file_options()
        self.registries: dict[str, Registry] = {
            kind.group: Registry(kind, file_options.get(kind.group)) for kind in KINDS
        }
        self.commands = CommandRegistry()
        self.records: dict[str, PluginRecord] = {}

    # -- loading -------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load every ``mwga`` entry point; mwga's own first, so a clash blames the newcomer."""
        found = list(entry_points(group=ENTRY_POINT_GROUP))
        found.sort(key=lambda ep: (_distribution_name(ep) != BUILTIN_DISTRIBUTION, ep.name))
        blocked = _blocked()
        seen: set[tuple[str, str]] = set()
        for ep in found:
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist, version = _distribution_name(ep), _distribution_version(ep)
            # Another distribution may pick an entry-point name mwga already uses (`cosine`, say):
            # qualify it by its distribution instead of skipping it unreported.
            name = ep.name if ep.name not in self.records else f"{dist}:{ep.name}"
            record = PluginRecord(name, dist, version, ep.value)
            self.records[name] = record
            if ep.name in blocked or (dist is not None and dist in blocked):
                record.status = "blocked"
                continue
            try:
                module = ep.load()
            except Exception as error:  # a third party's import error must not stop mwga
                self._fail(record, error)
                continue
            self.add_plugin(module, name, record=record)

    def add_plugin(
        self, plugin: ModuleType | object, name: str, *, record: PluginRecord | None = None
    ) -> PluginRecord:
        """Register one plugin object (a module or instance with hook implementations) and collect it.

        Third parties normally use entry points; tests and notebooks may call this directly.
        """
        if record is None:
            if name in self.records:
                # Reusing a name would overwrite the holder's record and, on failure, drop its entries.
                raise ValueError(f"a plugin named {name!r} is already added; give this one another name")
            record = PluginRecord(name, None, None, getattr(plugin, "__name__", type(plugin).__name__))
            self.records[name] = record
        try:
            self.manager.register(plugin, name=name)
            self._check_hook_names(plugin, name)
        except Exception as error:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._fail(record, error)
            return record
        self._collect(plugin, record)
        return record

    def _check_hook_names(self, plugin: object, name: str) -> None:
        """A misspelled hook (``mwga_register_descriptor``) is an error, not a silent no-op."""
        known = {kind.hook for kind in KINDS} | {COMMANDS_HOOK}
        for attribute in dir(plugin):
            if attribute.startswith("mwga_") and attribute not in known:
                raise PluginLoadError(
                    f"plugin {name!r} implements unknown hook {attribute!r}; known hooks: {', '.join(sorted(known))}"
                )

    def _collect(self, plugin: object, record: PluginRecord) -> None:
        """Call each registration hook of one plugin with a registrar bound to it."""
        for kind in KINDS:
            caller = getattr(self.manager.hook, kind.hook)
            impls = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
            for impl in impls:
                registrar = Registrar(self.registries[kind.group], record.name)
                try:
                    impl.function(register=registrar)
                except Exception as error:
                    # All or nothing: a plugin that fails half-way keeps none of its entries (removed
                    # before _fail, which raises in strict mode).
                    for registry in self.registries.values():
                        registry.remove_plugin(record.name)
                    record.registered.clear()
                    self.manager.unregister(plugin)
                    self._fail(record, error)
                    return
                if registrar.registered:
                    record.registered.setdefault(kind.group, []).extend(registrar.registered)
        for impl in self.manager.hook.mwga_register_commands.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            commands = CommandRegistrar(self.commands, record.name)
            try:
                impl.function(register=commands)
            except Exception as error:
                for registry in self.registries.values():
                    registry.remove_plugin(record.name)
                self.commands.remove_plugin(record.name)
                record.registered.clear()
                self.manager.unregister(plugin)
                self._fail(record, error)
                return
            if commands.registered:
                record.registered.setdefault("commands", []).extend(commands.registered)

    def _fail(self, record: PluginRecord, error: BaseException) -> None:
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
        if isinstance(error, DuplicateComponentError):
            holder = error.plugins[0]
            record.error += f" ({holder!r} comes from {self._origin(holder)})"
        if _strict():
            raise PluginLoadError(
                f"plugin {record.name!r} from {record.distribution or 'an unknown distribution'} failed: "
                f"{record.error}"
            ) from error
        if os.environ.get("MWGA_DEBUG_PLUGINS"):
            traceback.print_exception(error, file=sys.stderr)

    # -- lookup ----------------------------------------------------------------------------------
    def registry(self, group: str) -> Registry:
        """The registry behind a config group (``descriptor``, ``projection``, ...)."""
        if group not in self.registries:
            raise KeyError(f"no component kind with config group {group!r}; groups: {sorted(KINDS_BY_GROUP)}")
        return self.registries[group]

    def build(self, group: str, config: Any) -> Any:
        """Instantiate the component ``config.name`` of config group ``group``.

        An unknown name is explained further when ``MWGA_BLOCK_PLUGINS`` blocks plugins that may provide it.
        """
        try:
            return self.registry(group).build(config)
        except UnknownComponentError as error:
            note = self.blocked_note()
            if not note:
                raise
            raise UnknownComponentError(error.kind, error.name, error.known, hint=f"({note}.)") from None

    def failures(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "failed"]

    def blocked(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "blocked"]

    def blocked_note(self) -> str:
        """One sentence naming the plugins ``MWGA_BLOCK_PLUGINS`` blocked, or ``""`` when none is.

        Blocked plugins are never imported, so what they would register is unknown: any missing
        component may be theirs, and the note says so wherever a component is not found.
        """
        blocked = self.blocked()
        if not blocked:
            return ""
        listing = ", ".join(f"{r.name!r} ({self._origin(r.name)})" for r in blocked)
        setting = os.environ.get(BLOCK_ENV, "")
        if len(blocked) == 1:
            return f"{BLOCK_ENV}={setting} blocks plugin {listing}: its components are not available"
        return f"{BLOCK_ENV}={setting} blocks plugins {listing}: their components are not available"

    def _origin(self, plugin: str) -> str:
        """Where a plugin comes from, for messages: ``mwga 0.1.0``, or its module when it has no
        distribution (added with :meth:`add_plugin`)."""
        record = self.records.get(plugin)
        if record is None:
            return "an unknown source"
        if record.distribution:
            return f"{record.distribution} {record.version}" if record.version else record.distribution
        return f"module {record.module}"


def _distribution_name(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _distribution_version(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, loading entry points on first use."""
    global _HOST
    if _HOST is None:
        host = PluginHost()
        host.load_entry_points()
        _HOST = host
    return _HOST


def reset_host() -> None:
    """Forget the process-wide host (tests use this after installing or blocking plugins)."""
    global _HOST
    _HOST = None
