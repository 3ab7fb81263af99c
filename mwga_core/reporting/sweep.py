"""Aggregating a multirun: one table of swept values x mean metrics, written when the sweep ends.

Hydra calls :class:`AggregateSweep` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) once
all jobs have finished. Jobs return nothing to it; it reads each job's ``results.json`` and
``.hydra/overrides.yaml`` from the sweep folder, or the ``failed.json`` of a job that stopped on a user
error (:func:`mwga_core.reporting.results.write_job_failure`): the summary lists that job with its error
and no metrics, and the callback records the failures in :data:`ENDED_SWEEPS` so that ``mwga -m`` exits
with the failed jobs' code once the sweep is over.

Why a list in this module: Hydra drops the values that jobs and callbacks return, and a parallel launcher
(joblib) runs the jobs in other processes, so only this callback, which runs in the ``mwga`` process after
every job and reads every job's folder, sees all failures; ``mwga_core.cli.run.run_command`` reads them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from mwga_core.reporting.results import failed_job_dirs, job_dirs, job_order, job_overrides
from mwga_core.reporting.run_outputs import (
    format_value,
    markdown_table,
    pretty_metric,
    rich_table,
    table_console,
)

#: the summary column holding a failed job's error (present only when a job failed)
ERROR_COLUMN = "error"


@dataclass
class FailedJob:
    """A sweep job that stopped on a user error: its folder's name, the overrides that vary between the
    sweep's jobs, its error and its exit code."""

    name: str
    overrides: dict[str, str]
    error: str
    exit_code: int


@dataclass
class EndedSweep:
    """A sweep that ended in this process: its folder, how many jobs ran and which of them failed."""

    folder: Path
    jobs: int
    failed: list[FailedJob]

    @property
    def exit_code(self) -> int:
        """0 when every job succeeded, else the highest exit code of the failed jobs."""
        return max((job.exit_code for job in self.failed), default=0)


#: the sweeps that ended in this process, in order (filled by :class:`AggregateSweep`)
ENDED_SWEEPS: list[EndedSweep] = []


def varying_keys(overrides: list[dict[str, str]]) -> list[str]:
    """The override keys whose value differs between jobs (all keys when none does), sorted."""
    keys = sorted({key for o in overrides for key in o})
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1] or keys


def aggregate_sweep(sweep_dir: Path) -> tuple[list[str], list[list[Any]]] | None:
    """Collect (headers, rows) from a finished sweep folder; None when no job left results or failed.

    A failed job's row has empty metric cells and its error in a last ``error`` column, which is there
    only when a job failed (a sweep without failures gives the same table as always).
    """
    finished, failed = job_dirs(sweep_dir), failed_job_dirs(sweep_dir)
    jobs = sorted([*finished, *failed], key=job_order)
    if not jobs:
        return None
    overrides = [job_overrides(job) for job in jobs]
    varying = varying_keys(overrides)
    results = {job: json.loads((job / "results.json").read_text()) for job in finished}
    metric_names = list(results[finished[0]]["metrics"]["mean"]) if finished else []
    headers = ["job"] + varying + metric_names + ([ERROR_COLUMN] if failed else [])
    rows = []
    for job, o in zip(jobs, overrides, strict=True):
        row = [job.name] + [o.get(k, "") for k in varying]
        if job in failed:
            row += [""] * len(metric_names) + [failed[job]["error"]]
        else:
            row += [results[job]["metrics"]["mean"][m] for m in metric_names] + ([""] if failed else [])
        rows.append(row)
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
    # a "|" in an error message would split its Markdown cell
    (sweep_dir / "summary.md").write_text(
        markdown_table(pretty, [[c.replace("|", "\\|") for c in r] for r in shown])
    )
    (console or table_console()).print(
        rich_table(f"Sweep summary (mean over patterns): {sweep_dir}", pretty, shown)
    )
    return sweep_dir / "summary.csv"


def sweep_failures(sweep_dir: Path) -> EndedSweep:
    """The jobs of a finished sweep folder and which of them failed."""
    finished, failed = job_dirs(sweep_dir), failed_job_dirs(sweep_dir)
    varying = varying_keys([job_overrides(job) for job in [*finished, *failed]])
    return EndedSweep(
        folder=sweep_dir,
        jobs=len(finished) + len(failed),
        failed=[
            FailedJob(
                job.name,
                {k: v for k, v in job_overrides(job).items() if k in varying},
                record["error"],
                record["exit_code"],
            )
            for job, record in failed.items()
        ],
    )


class AggregateSweep(Callback):
    """Hydra callback: write the sweep summary when a multirun ends, record failed jobs in
    :data:`ENDED_SWEEPS`, and for an experiment preset (``+experiment=...``) whose jobs all succeeded
    write the paper's tables and figures into ``<sweep>/report`` (as ``mwga report``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = write_sweep_summary(sweep_dir)
        ended = sweep_failures(sweep_dir)
        ENDED_SWEEPS.append(ended)
        if summary is None or ended.failed or not config.get("experiment_name"):
            return
        from mwga_core.reporting.builder import build_report

        report = build_report(sweep_dir)
        table_console().print(f"report: {report.index}")
