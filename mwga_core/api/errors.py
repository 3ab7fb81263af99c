"""Errors mwga reports to a person instead of a traceback.

Every error a user can cause by their input or configuration derives from :class:`MwgaUserError`.
The command line prints its message and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class MwgaUserError(Exception):
    """A problem with the user's input or configuration, explained in the message."""

    exit_code = 2


class ConfigValueError(MwgaUserError):
    """A config field holds a value outside what the component accepts.

    Args:
        field: dotted config path, e.g. ``descriptor.bins``.
        value: the offending value.
        allowed: a human description of the allowed values, e.g. ``"an integer >= 1"``.
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: expected {allowed}.")

    def under(self, prefix: str) -> ConfigValueError:
        """The same error with ``prefix.`` in front of the field name."""
        return ConfigValueError(f"{prefix}.{self.field}", self.value, self.allowed)


class UnknownComponentError(MwgaUserError):
    """A component name that no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, hint: str = "") -> None:
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {listing}.{' ' + hint if hint else ''}")


class DuplicateComponentError(MwgaUserError):
    """A plugin registered a component name another plugin (loaded before it) already holds.

    The plugin loaded first keeps the name; the newcomer is not loaded at all (all or nothing).
    """

    def __init__(self, kind: str, name: str, first_plugin: str, second_plugin: str) -> None:
        self.kind, self.name = kind, name
        self.plugins = (first_plugin, second_plugin)
        super().__init__(
            f"{kind} {name!r} is already registered by plugin {first_plugin!r}, so plugin {second_plugin!r} "
            f"cannot register it too and none of its components are loaded ({first_plugin!r} keeps "
            f"{name!r}); rename the component, or uninstall or block one of the two with MWGA_BLOCK_PLUGINS."
        )


class ConfigNameTakenError(MwgaUserError):
    """A plugin registered a component name that one of mwga's config files already is an option of.

    ``gradient=diffusion_motion`` is ``conf/gradient/diffusion_motion.yaml``: a component registered under
    that name would collide with the file in Hydra's config group, so the plugin is not loaded.
    """

    def __init__(self, kind: str, group: str, name: str, config_file: str, plugin: str) -> None:
        self.kind, self.group, self.name = kind, group, name
        self.config_file, self.plugin = config_file, plugin
        super().__init__(
            f"{kind} {name!r} of plugin {plugin!r} clashes with the config file {config_file} "
            f"({group}={name} is taken by it), so none of the plugin's components are loaded; "
            f"rename the component."
        )


class PluginLoadError(MwgaUserError):
    """A plugin failed to import or to register (raised only in strict mode)."""


class DataError(MwgaUserError):
    """Input data that cannot be used: a corrupt file, NaN frames, an empty corpus, a static query."""
