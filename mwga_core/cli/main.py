"""The ``mwga`` command.

``mwga [overrides]`` runs the attribution job Hydra composes from ``conf/`` (``-m`` for a multirun);
``mwga plugins [--json]`` lists the installed plugins. Other subcommands live in
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from mwga_core.api.errors import MwgaUserError
from mwga_core.reporting.run_outputs import table_console

stderr = Console(stderr=True)
stdout = table_console()


def plugins_command(args: list[str]) -> int:
    """``mwga plugins [--json]``: name, distribution, version, status, what each registered."""
    from mwga_core.plugin_host.host import get_host

    host = get_host()
    records = [record.as_dict() for record in host.records.values()]
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
        status = {"loaded": "[green]loaded[/]", "failed": "[red]failed[/]", "blocked": "[yellow]blocked[/]"}[
            record["status"]
        ]
        table.add_row(record["name"], record["distribution"] or "-", record["version"] or "-", status, what)
    stdout.print(table)
    return 0


#: ``mwga <word>`` -> the function that runs it, as ``module:function``; imported only when that word is
#: used, so ``mwga --help`` never pays for torch, cv2 or matplotlib.
SUBCOMMAND_TARGETS: dict[str, str] = {
    "train-raft": "mwga_plugins.motion.raft_net.train:main",
    "report": "mwga_core.cli.report:report_command",
    "flow-eval": "mwga_core.evaluation.flow_eval:flow_eval_command",
    "index": "mwga_core.retrieval.index:index_command",
    "attribute": "mwga_core.retrieval.attribute:attribute_command",
    "model-check": "mwga_core.diffusion.model_check:model_check_command",
    "cache": "mwga_core.cli.cache:cache_command",
}


def _lazy(target: str) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(args)

    run.__doc__ = f"Runs {target}."
    return run


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "plugins": plugins_command,
    **{name: _lazy(target) for name, target in SUBCOMMAND_TARGETS.items()},
}


def run_job(cfg: DictConfig) -> dict:
    """One Hydra job: run the pipeline, print the table, write the outputs into the job's folder."""
    from hydra.core.hydra_config import HydraConfig

    from mwga_core.api.context import RunContext
    from mwga_core.api.progress import progress_wanted
    from mwga_core.config.schema import cache_path
    from mwga_core.pipeline.run import run_attribution
    from mwga_core.reporting.run_outputs import metric_rows, pretty_metric, rich_table, write_run_outputs

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        output_dir=output_dir,
        show_progress=progress_wanted(stderr),
        console=stderr,
    )
    result = run_attribution(cfg, ctx)
    names = OmegaConf.to_object(cfg.eval).names()
    write_run_outputs(result, cfg, output_dir, names)
    (output_dir / "timings.json").write_text(json.dumps(ctx.stage_log, indent=2) + "\n")
    title = f"{cfg.method_name}: N={len(result.corpus.train)} training clips, {len(result.corpus.queries)} queries"
    stdout.print(
        rich_table(
            title, ["Pattern"] + [pretty_metric(n) for n in names], metric_rows(result.evaluation, names)
        )
    )
    if not result.evaluation.per_pattern:
        stdout.print("[dim]no query has a label: metrics skipped; the rankings are in rankings.csv[/dim]")
    for skipped in result.corpus.skipped:
        stderr.print(f"[yellow]skipped:[/] {skipped['reason']}", highlight=False)
    stdout.print(f"[dim]outputs: {output_dir}[/dim]")
    return result.evaluation.mean


def task(cfg: DictConfig) -> dict:
    """The Hydra task. Module-level and undecorated, so parallel launchers (joblib) pickle it by name."""
    try:
        return run_job(cfg)
    except MwgaUserError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(error.exit_code) from None


hydra_app = hydra.main(version_base="1.3", config_path="pkg://mwga_conf", config_name="config")(task)


def _warn_failed_plugins() -> None:
    from mwga_core.plugin_host.host import get_host

    for record in get_host().failures():
        where = f"{record.distribution} {record.version}" if record.distribution else record.module
        stderr.print(
            f"[yellow]warning:[/] plugin {record.name!r} ({where}) failed and was skipped: {record.error} "
            "(see `mwga plugins`)",
            highlight=False,
        )
    # Hydra's "Could not find 'descriptor/hoof'" cannot know why: say which plugins were blocked.
    if note := get_host().blocked_note():
        stderr.print(f"[yellow]note:[/] {note} (see `mwga plugins`)", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mwga`` console script."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] in SUBCOMMANDS:
            return SUBCOMMANDS[args[0]](args[1:])
        from mwga_core.config.schema import register_configs
        from mwga_core.plugin_host.host import get_host

        register_configs(get_host())
        _warn_failed_plugins()
        if argv is not None:
            sys.argv = [sys.argv[0], *argv]
        hydra_app()
    except MwgaUserError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        return error.exit_code
    except BrokenPipeError:  # `mwga --help | head`: the reader left; not an error
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
