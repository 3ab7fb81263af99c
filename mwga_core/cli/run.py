"""``mwga [overrides]``: the attribution job Hydra composes from ``conf/`` (``-m`` for a multirun).

Hydra's ``@hydra.main`` composes the config, makes the run folder and runs :func:`task` once per job;
:func:`task` types the config with :func:`mwga_core.config.compose.to_typed` and runs :func:`run_job`.
A config that does not compose is reported like in every other command: one line, exit code 2.

In a sweep (``-m``) a job that stops on a user error (``descriptor.bins=8,0``) does not stop the sweep:
it prints its one-line error, leaves ``failed.json`` in its folder and returns; the other jobs run, the
summary (:mod:`mwga_core.reporting.sweep`) lists the failed job with its error, and ``mwga -m`` exits
with that job's code (2) once the sweep is over.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from mwga_core.api.errors import MwgaUserError
from mwga_core.cli.messages import print_error, stderr, warn_plugin_problems
from mwga_core.config.compose import (
    COMPOSITION_ERRORS,
    CONFIG_MODULE,
    ConfigCompositionError,
    composition_message,
    to_typed,
)
from mwga_core.config.schema import MwgaConfig, cache_path, register_configs
from mwga_core.plugin_host.host import get_host

if TYPE_CHECKING:  # the reporting modules are imported where they are used: `mwga --help` needs none
    from mwga_core.reporting.sweep import EndedSweep

#: Hydra's switch that makes it raise a composition error instead of printing it over several lines
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"


def run_job(cfg: MwgaConfig, output_dir: Path) -> dict:
    """Run the pipeline for ``cfg``, print the table, write the outputs into ``output_dir``.

    Returns the mean metrics (Hydra keeps them as the job's return value).
    """
    from mwga_core.api.context import RunContext
    from mwga_core.api.progress import progress_wanted
    from mwga_core.pipeline.run import run_attribution
    from mwga_core.reporting.run_outputs import (
        metric_rows,
        pretty_metric,
        rich_table,
        table_console,
        write_run_outputs,
    )

    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        output_dir=output_dir,
        show_progress=progress_wanted(stderr),
        console=stderr,
    )
    result = run_attribution(cfg, ctx)
    names = cfg.eval.names()
    write_run_outputs(result, cfg, output_dir, names)
    (output_dir / "timings.json").write_text(json.dumps(ctx.stage_log, indent=2) + "\n")
    corpus = result.corpus
    title = f"{cfg.method_name}: N={len(corpus.train)} training clips, {len(corpus.queries)} queries"
    stdout = table_console()
    stdout.print(
        rich_table(title, ["Pattern", *map(pretty_metric, names)], metric_rows(result.evaluation, names))
    )
    if not result.evaluation.per_pattern:
        stdout.print("[dim]no query has a label: metrics skipped; the rankings are in rankings.csv[/dim]")
    for skipped in corpus.skipped:
        stderr.print(f"[yellow]skipped:[/] {skipped['reason']}", highlight=False)
    stdout.print(f"[dim]outputs: {output_dir}[/dim]")
    return result.evaluation.mean


def task(cfg: DictConfig) -> dict | None:
    """The Hydra task. Module-level and undecorated, so parallel launchers (joblib) pickle it by name.

    A user error ends a single run with its code; in a sweep it is recorded in the job's folder
    (``failed.json``) and the task returns None, so that Hydra goes on with the other jobs.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mwga_core.reporting.results import forget_job_failure, write_job_failure

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    if in_sweep:
        forget_job_failure(output_dir)
    try:
        return run_job(to_typed(cfg), output_dir)
    except MwgaUserError as error:
        print_error(error)
        # Hydra's launcher stops the sweep at an exception that is no Exception (SystemExit); at any
        # other it finishes the batch but writes no summary: so return, and let the summary tell.
        if not in_sweep:
            raise SystemExit(error.exit_code) from None
        write_job_failure(output_dir, error)
        return None


hydra_app = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")(task)


@contextmanager
def composition_errors_in_one_line() -> Iterator[None]:
    """Make Hydra raise a config that does not compose (its ``HYDRA_FULL_ERROR`` switch) and turn it into
    a ConfigCompositionError; a user who set ``HYDRA_FULL_ERROR=1`` gets Hydra's full traceback."""
    if os.environ.get(HYDRA_FULL_ERROR) == "1":
        yield
        return
    previous = os.environ.get(HYDRA_FULL_ERROR)
    os.environ[HYDRA_FULL_ERROR] = "1"
    try:
        yield
    except COMPOSITION_ERRORS as error:
        raise ConfigCompositionError(composition_message(error)) from None
    finally:
        if previous is None:
            os.environ.pop(HYDRA_FULL_ERROR, None)
        else:
            os.environ[HYDRA_FULL_ERROR] = previous


#: Hydra's flags that print a help page listing every config group and its options
HELP_FLAGS = ("--help", "-h", "--hydra-help")


@contextmanager
def group_listing_from_one_repository_copy() -> Iterator[None]:
    """Let Hydra's help pages list the config groups from one copy of the config repository.

    Hydra answers each of the ~100 "options of group X" queries of a help page with a fresh deep copy of
    the whole config repository, mwga's many structured configs included: seconds of copying. The queries
    of one help page all have the same inputs (no config name, no overrides), so one copy per input
    serves them all; the page is unchanged. Hydra 1.3's ``ConfigLoaderImpl.get_group_options`` is
    replaced only while the help is printed.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    original = ConfigLoaderImpl.get_group_options
    copies: dict[tuple, Any] = {}

    def get_group_options(
        self: ConfigLoaderImpl,
        group_name: str,
        results_filter: ObjectType | None = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        key = (id(self), config_name, tuple(overrides or ()))
        if key not in copies:
            copies[key] = self._parse_overrides_and_create_caching_repo(config_name, list(overrides or ()))[1]
        return copies[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options
    try:
        yield
    finally:
        ConfigLoaderImpl.get_group_options = original


def run_command(args: list[str]) -> int:
    """``mwga [overrides]``: Hydra's command line (``-m``, ``--cfg job``, ``--help``, ...) over conf/.

    Returns 0, or for a sweep with failed jobs the highest of their exit codes (2 for user errors).
    """
    host = get_host()
    register_configs(host)
    warn_plugin_problems(host)
    sys.argv = [sys.argv[0], *args]
    helping = any(flag in args for flag in HELP_FLAGS)
    if helping:  # a help page runs no job and ends no sweep
        with composition_errors_in_one_line(), group_listing_from_one_repository_copy():
            hydra_app()
        return 0
    from mwga_core.reporting.sweep import ENDED_SWEEPS

    ended_before = len(ENDED_SWEEPS)
    with composition_errors_in_one_line():
        hydra_app()
    exit_code = 0
    for sweep in ENDED_SWEEPS[ended_before:]:
        if sweep.failed:
            print_error(MwgaUserError(_failed_jobs_message(sweep)))
        exit_code = max(exit_code, sweep.exit_code)
    return exit_code


def _failed_jobs_message(sweep: EndedSweep) -> str:
    """``2 of 5 sweep jobs failed (job 1 (descriptor.bins=0), ...); <sweep>/summary.md lists their errors``."""
    named = [
        f"job {job.name} ({' '.join(f'{k}={v}' for k, v in job.overrides.items())})" for job in sweep.failed
    ]
    return (
        f"{len(sweep.failed)} of {sweep.jobs} sweep jobs failed ({', '.join(named)}); "
        f"{sweep.folder / 'summary.md'} lists their errors"
    )
