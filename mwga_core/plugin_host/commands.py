"""Subcommands that plugins add to the ``mwga`` command line (hook ``mwga_register_commands``).

A plugin calls ``register(name, function, help=...)``; ``mwga <name> args...`` then calls
``function(args) -> exit code``. Names follow the subcommand style (``train-raft``: lower case, digits,
hyphens) and may not shadow a built-in subcommand or another plugin's command: the newcomer fails to load
whole, like a duplicate component.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mwga_core.api.errors import PluginLoadError

COMMAND_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
#: the hook plugins implement to add subcommands
COMMANDS_HOOK = "mwga_register_commands"
#: mwga's own subcommands (the keys of ``mwga_core.cli.main.SUBCOMMANDS``): no plugin may take them
BUILTIN_SUBCOMMANDS = frozenset(
    {"index", "attribute", "model-check", "flow-eval", "cache", "report", "plugins", "counterfactual"}
)


@dataclass(frozen=True)
class CommandSpec:
    """One plugin subcommand: ``mwga <name> args`` calls ``function(args)``, which returns an exit code."""

    name: str
    function: Callable[[list[str]], int]
    help: str
    plugin: str


class CommandRegistry:
    """Plugin subcommands by name; ``reserved`` are the built-in subcommands' names."""

    def __init__(self, reserved: frozenset[str] = BUILTIN_SUBCOMMANDS) -> None:
        self.reserved = reserved
        self.commands: dict[str, CommandSpec] = {}

    def add(self, spec: CommandSpec) -> None:
        if not COMMAND_NAME.match(spec.name):
            raise PluginLoadError(f"command name {spec.name!r} must match {COMMAND_NAME.pattern}")
        if not callable(spec.function):
            raise PluginLoadError(f"command {spec.name!r}: {spec.function!r} is not callable")
        if spec.name in self.reserved:
            raise PluginLoadError(f"command {spec.name!r} is a built-in mwga subcommand")
        if spec.name in self.commands:
            holder = self.commands[spec.name].plugin
            raise PluginLoadError(f"command {spec.name!r} is already registered by plugin {holder!r}")
        self.commands[spec.name] = spec

    def remove_plugin(self, plugin: str) -> None:
        self.commands = {name: spec for name, spec in self.commands.items() if spec.plugin != plugin}


class CommandRegistrar:
    """The ``register`` callback a plugin's ``mwga_register_commands`` receives, bound to that plugin."""

    def __init__(self, registry: CommandRegistry, plugin: str) -> None:
        self.registry = registry
        self.plugin = plugin
        self.registered: list[str] = []

    def __call__(self, name: str, function: Callable[[list[str]], int], help: str = "") -> None:
        self.registry.add(CommandSpec(name, function, help, self.plugin))
        self.registered.append(name)
