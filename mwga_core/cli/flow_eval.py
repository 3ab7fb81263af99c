"""``mwga flow-eval [--estimators SPEC,...] [--clips N] [--border B] [--out DIR] [overrides]``.

EPE and 1/3/5-px accuracy of motion estimators against the exact flow of the run config's dataset
(:mod:`mwga_core.evaluation.flow_eval`). The overrides are those of ``mwga``: ``dataset.size=16``,
``seed=1``, ``device=cuda``, ``motion=dis motion.preset=fast``. Without ``--estimators`` the config's
``motion`` is evaluated; each ``--estimators`` entry ``NAME[:FIELD=VALUE...]`` is composed as the
overrides plus ``motion=NAME motion.FIELD=VALUE``, so an entry's fields are checked like any override.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.errors import MwgaUserError
from mwga_core.api.motion import MotionEstimator
from mwga_core.api.progress import progress_wanted
from mwga_core.cli.messages import stderr, warn_plugin_problems
from mwga_core.config.compose import compose
from mwga_core.config.schema import MwgaConfig
from mwga_core.evaluation.flow_eval import (
    METRIC_HEADERS,
    METRIC_NAMES,
    OVERALL,
    FlowScore,
    estimator_overrides,
    evaluate_estimator,
    interior_mask,
    save_flow_pictures,
    table_rows,
    write_outputs,
)
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.reporting.run_outputs import table_console


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga flow-eval",
        description="EPE and 1/3/5-px accuracy of motion estimators against the dataset's exact flow. "
        "Overrides are the same as for `mwga` (dataset.size=16 seed=1 motion=dis motion.preset=fast).",
    )
    parser.add_argument(
        "--estimators",
        default="",
        help="comma-separated estimators, each NAME or NAME:FIELD=VALUE:... (e.g. farneback,dis:preset=fast); "
        "default: the config's motion",
    )
    parser.add_argument("--clips", type=int, default=60, help="the first N training clips (60; 0 = all)")
    parser.add_argument(
        "--out", default="outputs/flow-eval", help="output folder (default outputs/flow-eval)"
    )
    parser.add_argument(
        "--border", type=int, default=4, help="pixels left out at each edge (default 4; 0 = full frame)"
    )
    parser.add_argument("--save-flow-png", metavar="DIR", help="write one colour-wheel PNG per pattern here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `mwga`")
    return parser


def compose_estimators(
    specs: list[str], overrides: list[str], host: PluginHost
) -> tuple[MwgaConfig, dict[str, MotionEstimator]]:
    """The run config of ``overrides`` and each estimator (label -> estimator), built from its config."""
    cfg = compose(overrides, host=host)
    configs = {s.strip(): compose([*overrides, *estimator_overrides(s)[1]], host=host).motion for s in specs}
    if not configs:
        configs = {cfg.motion.name: cfg.motion}
    estimators = {label: host.build("motion", config) for label, config in configs.items()}
    for label, estimator in estimators.items():
        if not estimator.produces_flow:
            raise MwgaUserError(f"--estimators {label}: this estimator computes no flow.")
    return cfg, estimators


def print_table(scores: list[FlowScore], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("Estimator")
    table.add_column("Pattern")
    for metric in METRIC_NAMES:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    for score, row in zip(scores, table_rows(scores), strict=True):
        table.add_row(*row, end_section=score.pattern == OVERALL)
    table_console().print(table)


def flow_eval_command(args: list[str]) -> int:
    """``mwga flow-eval``: evaluate estimators, print the table, write JSON/CSV/markdown (and pictures)."""
    options = make_parser().parse_intermixed_args(args)
    if options.clips < 0:
        raise MwgaUserError(f"--clips {options.clips}: expected an integer >= 0 (0 = all).")
    host = get_host()
    warn_plugin_problems(host)
    specs = [s for s in options.estimators.split(",") if s.strip()]
    cfg, estimators = compose_estimators(specs, options.overrides, host)
    dataset = host.build("dataset", cfg.dataset)
    ctx = RunContext(seed=cfg.seed, device=cfg.device, show_progress=progress_wanted(stderr), console=stderr)
    corpus = dataset.load(ctx)
    count = len(corpus.train) if options.clips == 0 else min(options.clips, len(corpus.train))
    clips = corpus.train.subset(np.arange(count))
    interior_mask(*clips.frames.shape[2:4], options.border)  # fail on a bad border before any work

    scores: list[FlowScore] = []
    flows: dict[str, np.ndarray] = {}
    for label, estimator in estimators.items():
        found, flows[label] = evaluate_estimator(
            label, estimator, clips, corpus.class_names, ctx, options.border
        )
        scores += found

    out_dir = Path(options.out)
    settings = {
        "estimators": {label: repr(e.config) for label, e in estimators.items()},
        "clips": count,
        "seed": cfg.seed,
        "border": options.border,
        "frame_size": list(clips.frames.shape[2:4]),
        "frame_pairs_per_clip": int(clips.frames.shape[1] - 1),
        "dataset": repr(dataset.config),
        "overrides": list(options.overrides),
    }
    write_outputs(scores, out_dir, settings)
    region = "full frame" if options.border == 0 else f"interior, {options.border}-px border left out"
    print_table(scores, f"Flow accuracy: {count} clips, seed {cfg.seed}, {region}")
    stderr.print(f"[dim]outputs: {out_dir}[/dim]")
    if options.save_flow_png:
        written = save_flow_pictures(Path(options.save_flow_png), clips, corpus.class_names, flows)
        stderr.print(f"[dim]{len(written)} flow pictures: {options.save_flow_png}[/dim]")
    return 0
