"""Aggregating a multirun: one table of swept values x mean metrics, written when the sweep ends.

Hydra calls :class:`AggregateSweep` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) once
all jobs have finished. Jobs return nothing to it; it reads each job's ``results.json`` and
``.hydra/overrides.yaml`` from the sweep folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from mwga_core.reporting.results import job_dirs, job_overrides
from mwga_core.reporting.run_outputs import (
    format_value,
    markdown_table,
    pretty_metric,
    rich_table,
    table_console,
)


def aggregate_sweep(sweep_dir: Path) -> tuple[list[str], list[list[Any]]] | None:
    """Collect (headers, rows) from a finished sweep folder; None when no job left results."""
    jobs = job_dirs(sweep_dir)
    if not jobs:
        return None
    overrides = [job_overrides(job) for job in jobs]
    keys = sorted({key for o in overrides for key in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1] or keys
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    metric_names = list(results[0]["metrics"]["mean"])
    headers = ["job"] + varying + metric_names
    rows = [
        [job.name] + [o.get(k, "") for k in varying] + [r["metrics"]["mean"][m] for m in metric_names]
        for job, o, r in zip(jobs, overrides, results, strict=True)
    ]
    return headers, rows


def write_sweep_summary(sweep_dir: Path, console: Console | None = None) -> Path | None:
    """Write summary.csv and summary.md into ``sweep_dir`` and print the table; returns the CSV path."""
    aggregated = aggregate_sweep(sweep_dir)
    if aggregated is None:
        return None
    headers, rows = aggregated
    with open(sweep_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    shown = [[str(v) if isinstance(v, str) else format_value(v) for v in row] for row in rows]
    pretty = [pretty_metric(h) for h in headers]
    (sweep_dir / "summary.md").write_text(markdown_table(pretty, shown))
    (console or table_console()).print(
        rich_table(f"Sweep summary (mean over patterns): {sweep_dir}", pretty, shown)
    )
    return sweep_dir / "summary.csv"


class AggregateSweep(Callback):
    """Hydra callback: write the sweep summary when a multirun ends, and for an experiment preset
    (``+experiment=...``) the paper's tables and figures into ``<sweep>/report`` (as ``mwga report``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if write_sweep_summary(sweep_dir) is None or not config.get("experiment_name"):
            return
        from mwga_core.reporting.builder import build_report

        report = build_report(sweep_dir)
        table_console().print(f"report: {report.index}")
