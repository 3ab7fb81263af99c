"""What every ``mwga`` command prints besides its results: one-line errors and plugin warnings.

Errors and warnings go to stderr without line wrapping (``soft_wrap``), so a message is one line in a log
file or a pipe whatever its length; tables go to stdout (:func:`mwga_core.reporting.run_outputs.table_console`).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from mwga_core.api.errors import MwgaUserError
from mwga_core.plugin_host.host import PluginHost

stderr = Console(stderr=True)


def print_error(error: MwgaUserError) -> None:
    """``error: <message>`` on one line of stderr."""
    # escape: a message may hold square brackets ("[min, max]", "dataset.size=[24]") that rich would eat
    stderr.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def warn_plugin_problems(host: PluginHost) -> None:
    """One line per plugin that failed to load, and one naming the plugins ``MWGA_BLOCK_PLUGINS`` blocks."""
    for record in host.failures():
        where = f"{record.distribution} {record.version}" if record.distribution else record.module
        stderr.print(
            f"[yellow]warning:[/] plugin {escape(record.name)!r} ({escape(str(where))}) failed and was skipped: "
            f"{escape(str(record.error))} "
            "(see `mwga plugins`)",
            highlight=False,
            soft_wrap=True,
        )
    # Hydra's "Could not find 'descriptor/hoof'" cannot know why: say which plugins were blocked.
    if note := host.blocked_note():
        stderr.print(f"[yellow]note:[/] {note} (see `mwga plugins`)", highlight=False, soft_wrap=True)
