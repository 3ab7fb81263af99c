"""Loading plugins from entry points and collecting what they register.

Each entry point in the ``mwga`` group is loaded on its own: one that fails to import or to register is
recorded (distribution, version, error) and the rest keep working. Two environment variables change this:

``MWGA_STRICT_PLUGINS=1``
    raise on the first failing plugin (for plugin authors).
``MWGA_BLOCK_PLUGINS=name,other``
    skip these entry points (or every entry point of these distributions).
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from mwga_core.api.errors import PluginLoadError
from mwga_core.plugin_host import hookspecs
from mwga_core.plugin_host.kinds import KINDS, KINDS_BY_GROUP
from mwga_core.plugin_host.registry import Registrar, Registry

ENTRY_POINT_GROUP = "mwga"
STRICT_ENV = "MWGA_STRICT_PLUGINS"
BLOCK_ENV = "MWGA_BLOCK_PLUGINS"
BUILTIN_DISTRIBUTION = "mwga"


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


class PluginHost:
    """Owns the pluggy manager, the registries and the record of every plugin."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {kind.group: Registry(kind) for kind in KINDS}
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
        known = {kind.hook for kind in KINDS}
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
                    # All or nothing: a plugin that fails half-way keeps none of its entries.
                    self._fail(record, error)
                    for registry in self.registries.values():
                        registry.remove_plugin(record.name)
                    record.registered.clear()
                    return
                if registrar.registered:
                    record.registered.setdefault(kind.group, []).extend(registrar.registered)

    def _fail(self, record: PluginRecord, error: BaseException) -> None:
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
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
        """Instantiate the component ``config.name`` of config group ``group``."""
        return self.registry(group).build(config)

    def failures(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "failed"]


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
