"""``mwga model-check [--per-class N] [--json] [overrides]``: did the trained model learn motion?

Trains the run config's model on its dataset (or loads it from the model store, as ``mwga`` would), samples
``--per-class`` clips per class and recognises their class with the config's motion estimator and
descriptor (:func:`mwga_core.diffusion.model_check.check_motion`). Overrides are those of ``mwga``
(``model.training.steps=800``, ``seed=1``, ``dataset.num_clips=100``, ``method=ours_generative``).
"""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.progress import progress_wanted
from mwga_core.cli.messages import warn_plugin_problems
from mwga_core.config.compose import compose
from mwga_core.config.schema import cache_path
from mwga_core.diffusion.model_check import MotionCheck, check_motion, describe_motion, require_conditional
from mwga_core.plugin_host.host import get_host
from mwga_core.reporting.run_outputs import table_console

#: what ``--json`` reports of the training log
TRAINING_FIELDS = ("steps", "first_loss", "final_loss", "seconds", "cpu_seconds", "parameters")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga model-check",
        description="Train or load the run config's model, sample clips of each class and recognise "
        "their class from their motion. Overrides are the same as for `mwga`.",
    )
    parser.add_argument("--per-class", type=int, default=16, help="samples per class (16)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `mwga`")
    return parser


def summary_document(model, check: MotionCheck, per_class: int, classes: int) -> dict:
    """What ``--json`` prints: the model's folder and training log, the accuracies, the confusion."""
    log = model.info["training"]
    return {
        "model_folder": str(model.folder),
        "loaded_from_cache": model.loaded_from_cache,
        "training": {k: log[k] for k in TRAINING_FIELDS},
        "samples_per_class": per_class,
        "accuracy": check.accuracy,
        "mean_accuracy": check.mean_accuracy,
        "paired_accuracy": check.paired_accuracy,
        "mean_paired_accuracy": check.mean_paired_accuracy,
        "chance": 1.0 / classes,
        "real_clip_accuracy": check.real_accuracy,
        "confusion": check.confusion.tolist(),
    }


def print_check(model, check: MotionCheck, summary: dict, descriptor: str) -> None:
    """The per-class table, then chance, the ceiling on real clips and the model's training."""
    console = table_console()
    per_class = summary["samples_per_class"]
    table = Table(
        title=f"generated clips recognised by nearest class-mean {descriptor} ({per_class} per class)"
    )
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("paired accuracy", justify="right")
    for name, value in check.accuracy.items():
        table.add_row(name, f"{value:.3f}", f"{check.paired_accuracy[name]:.3f}")
    table.add_row("mean", f"{check.mean_accuracy:.3f}", f"{check.mean_paired_accuracy:.3f}")
    console.print(table)
    log = model.info["training"]
    console.print(
        f"chance {summary['chance']:.3f}; the same classifier on the training clips: {check.real_accuracy:.3f}; "
        f"model: {log['parameters']} parameters, {log['steps']} steps, loss {log['final_loss']:.4f}, "
        f"trained in {log['seconds']:.1f} s ({'cache' if model.loaded_from_cache else 'this run'})"
    )


def model_check_command(args: list[str]) -> int:
    """``mwga model-check``: compose the config, train or load the model, check it, print the result."""
    from mwga_core.pipeline.model_stage import load_or_train_model

    options = make_parser().parse_intermixed_args(args)
    if options.per_class < 1:
        raise ConfigValueError("--per-class", options.per_class, "an integer >= 1")
    host = get_host()
    warn_plugin_problems(host)
    cfg = compose(options.overrides, host=host)
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        show_progress=progress_wanted(table_console()),
    )
    adapter = host.build("model", cfg.model)
    require_conditional(adapter)
    describe = describe_motion(
        host.build("motion", cfg.motion), host.build("descriptor", cfg.descriptor), ctx
    )
    corpus = host.build("dataset", cfg.dataset).load(ctx)
    model = load_or_train_model(adapter, corpus.train, ctx, num_classes=len(corpus.class_names))
    check = check_motion(
        model, corpus.train, corpus.class_names, options.per_class, ctx, describe, context=corpus.queries
    )
    summary = summary_document(model, check, options.per_class, len(corpus.class_names))
    if options.json:
        print(json.dumps(summary, indent=2))
    else:
        print_check(model, check, summary, cfg.descriptor.name)
    return 0
