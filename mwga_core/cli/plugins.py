"""``mwga plugins [--json]``: every plugin mwga found, its distribution, version, status and registrations."""

from __future__ import annotations

import json

from rich.table import Table

from mwga_core.plugin_host.host import get_host
from mwga_core.reporting.run_outputs import table_console

STATUS_STYLE = {"loaded": "[green]loaded[/]", "failed": "[red]failed[/]", "blocked": "[yellow]blocked[/]"}


def plugins_command(args: list[str]) -> int:
    """``mwga plugins [--json]``: name, distribution, version, status, what each registered."""
    records = [record.as_dict() for record in get_host().records.values()]
    if "--json" in args:
        print(json.dumps(records, indent=2))
        return 0
    table = Table(title="mwga plugins", title_justify="left")
    for column in ("plugin", "distribution", "version", "status", "registered / error"):
        table.add_column(column)
    for record in records:
        what = record["error"] or "; ".join(
            f"{group}: {', '.join(names)}" for group, names in record["registered"].items()
        )
        status = STATUS_STYLE[record["status"]]
        table.add_row(record["name"], record["distribution"] or "-", record["version"] or "-", status, what)
    table_console().print(table)
    return 0
