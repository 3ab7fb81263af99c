"""``mwga report``: the paper's tables and figures rebuilt from finished runs and sweeps.

* :mod:`~mwga_core.reporting.results` reads run and sweep folders and aggregates seeds.
* :mod:`~mwga_core.reporting.paper` holds the paper's numbers (``paper_values.json``) and which sweep
  reproduces which table.
* :mod:`~mwga_core.reporting.tables` renders tables as markdown, CSV and LaTeX.
* :mod:`~mwga_core.reporting.figures` draws the figures (matplotlib, imported when drawing).
* :mod:`~mwga_core.reporting.builder` decides what a folder supports and writes the report.

This module imports nothing heavy: the command line imports it to list the subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def report_command(args: list[str]) -> int:
    """``mwga report <run-or-sweep-dir> [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="mwga report",
        description="Rebuild the paper's tables (markdown, CSV, LaTeX) and figures (PNG) from a finished run "
        "folder, a sweep folder, or a folder holding several (e.g. multirun/). The paper's reported values "
        "stand beside ours; several seeds give mean ± std and error bars.",
    )
    parser.add_argument(
        "folder", type=Path, help="a run folder (results.json) or sweep folder (<job>/results.json)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <folder>/report)")
    options = parser.parse_args(args)

    from mwga_core.reporting.builder import build_report
    from mwga_core.reporting.run_outputs import table_console

    build_report(options.folder, options.out, console=table_console())
    return 0
