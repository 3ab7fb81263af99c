"""``mwga counterfactual [--output-dir DIR] [overrides]``: does the attribution predict the counterfactual?

Scores every method of ``counterfactual.methods`` with the ordinary pipeline (each method preset composed
with the overrides and ``model=<counterfactual.model>``), then trains models on part of the training
clips through the model stage (cached in the model store, so methods, reruns and an interrupted run
reuse them) and measures:

* **LDS** (:mod:`mwga_core.counterfactual.lds`): over ``counterfactual.subsets`` random subsets of
  ``counterfactual.fraction`` of the clips, the Spearman correlation per query between the subset
  model's output and the summed scores of the subset's clips; mean over queries, bootstrap interval;
* **retrain without the top-k** (:mod:`mwga_core.counterfactual.retrain`): the change of a query's output
  when its top-k clips by a method are removed, against k random clips and k random clips of its class;
  with a conditional model (``counterfactual.model=video_denoiser_guided``) also the drop of the query's
  class's ``mwga model-check`` accuracy (:mod:`mwga_core.counterfactual.motion_check`).

With ``counterfactual.workers`` > 1 every model both protocols need is first trained by that many worker
processes (:mod:`mwga_core.counterfactual.parallel`); the protocols then read them from the store.

Writes ``counterfactual.json``, ``lds.csv``, ``retrain.csv`` and ``table.md`` into the output folder
(default ``outputs/counterfactual/<date>/<time>``) and prints the tables.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.progress import progress_wanted
from mwga_core.cli.messages import stderr, warn_plugin_problems
from mwga_core.config.checks import check_fields
from mwga_core.config.compose import compose
from mwga_core.config.schema import CounterfactualConfig, MwgaConfig, as_container, cache_path
from mwga_core.counterfactual.lds import lds_per_query, lds_summary
from mwga_core.counterfactual.motion_check import ModelChecker, check_document
from mwga_core.counterfactual.outputs import OUTPUT_NAMES
from mwga_core.counterfactual.parallel import pretrain_in_parallel
from mwga_core.counterfactual.report import print_counterfactual, write_counterfactual_outputs
from mwga_core.counterfactual.retrain import (
    Retrainer,
    models_needed,
    retrain_summary,
    retrain_without_top_k,
    subset_outputs,
)
from mwga_core.counterfactual.subsets import draw_subsets, subset_masks
from mwga_core.diffusion.model_check import Describer, describe_motion
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.reporting.run_outputs import table_console


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga counterfactual",
        description="LDS and retrain-without-top-k of each method in counterfactual.methods, on models "
        "mwga trains on subsets of the training clips. Overrides are the same as for `mwga`.",
    )
    parser.add_argument(
        "--output-dir", default=None, help="output folder (outputs/counterfactual/<date>/<time>)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `mwga`")
    return parser


def check_settings(cf: CounterfactualConfig, diffusion_steps: int) -> None:
    """Refuse settings no protocol can run, naming the field."""
    try:
        check_fields(cf)
    except ConfigValueError as error:
        raise error.under("counterfactual") from None
    if not cf.methods or any(not method.split() for method in cf.methods):
        raise ConfigValueError(
            "counterfactual.methods",
            list(cf.methods),
            "method presets, each optionally followed by overrides",
        )
    if len(set(cf.methods)) != len(cf.methods):
        raise ConfigValueError("counterfactual.methods", list(cf.methods), "distinct entries")
    if not cf.timesteps or any(not 0 <= t < diffusion_steps for t in cf.timesteps):
        raise ConfigValueError(
            "counterfactual.timesteps", list(cf.timesteps), f"steps in [0, {diffusion_steps})"
        )
    if any(k < 1 for k in cf.k):
        raise ConfigValueError("counterfactual.k", list(cf.k), "integers >= 1")
    if cf.subsets == 1:  # a rank correlation over one subset is undefined
        raise ConfigValueError("counterfactual.subsets", cf.subsets, "0 (no LDS) or at least 2")
    if cf.subsets == 0 and not cf.k:
        raise ConfigValueError(
            "counterfactual.subsets",
            cf.subsets,
            "at least 2 when counterfactual.k is empty: else nothing runs",
        )


def retrain_query_indices(num_queries: int, wanted: int) -> list[int]:
    """The queries of the retraining protocol: ``wanted`` of them spread evenly over the query list (every
    query for 0). Queries come grouped by class, so the first few would all show one motion."""
    if wanted == 0 or wanted >= num_queries:
        return list(range(num_queries))
    return sorted({int(i) for i in np.linspace(0, num_queries - 1, wanted).round()})


def check_describer(cfg: MwgaConfig, host: PluginHost, ctx: RunContext) -> Describer:
    """The motion descriptors the model check recognises samples by: the config's motion estimator and
    descriptor, as ``mwga model-check`` with the same overrides uses them."""
    return describe_motion(host.build("motion", cfg.motion), host.build("descriptor", cfg.descriptor), ctx)


def method_scores(
    overrides: list[str], cf: CounterfactualConfig, host: PluginHost, ctx: RunContext
) -> tuple[dict[str, np.ndarray], MwgaConfig, object]:
    """Each method's (Q, N) scores from the ordinary pipeline; the last method's config and corpus.

    A method is a preset name, optionally followed by overrides of its own (``"ours gradient.regions=1"``),
    which apply after the command line's, to that method only; its results are keyed by the whole entry.
    """
    from mwga_core.pipeline.run import run_attribution

    scores, corpus, cfg = {}, None, None
    for method in cf.methods:
        preset, *own = method.split()
        cfg = compose([*overrides, f"method={preset}", f"model={cf.model}", *own], host=host)
        result = run_attribution(cfg, ctx, host)
        if corpus is not None and result.corpus.train.ids != corpus.train.ids:
            raise ConfigValueError(
                "counterfactual.methods", list(cf.methods), "methods that load the same corpus"
            )
        corpus = result.corpus
        scores[method] = result.scores
    return scores, cfg, corpus


def counterfactual_command(args: list[str]) -> int:
    """``mwga counterfactual``: score the methods, run both protocols, write and print the results."""
    from mwga_core.pipeline.model_stage import data_classes

    start = time.perf_counter()
    options = make_parser().parse_intermixed_args(args)
    host = get_host()
    warn_plugin_problems(host)
    base = compose(options.overrides, host=host)
    cf = base.counterfactual
    output_dir = Path(options.output_dir or f"outputs/counterfactual/{datetime.now():%Y-%m-%d/%H-%M-%S}")
    ctx = RunContext(
        seed=base.seed,
        device=base.device,
        cache_dir=cache_path(base.cache),
        output_dir=output_dir,
        show_progress=progress_wanted(stderr),
        console=stderr,
    )
    model_cfg = compose([*options.overrides, f"model={cf.model}"], host=host).model
    check_settings(cf, model_cfg.diffusion_steps)
    adapter = host.build("model", model_cfg)  # refuses a bad model config before any work
    # a conditional model can generate each class: check what each retrained model still generates
    checking = bool(adapter.config.conditional and cf.k)
    describe = check_describer(base, host, ctx) if checking else None
    scores, cfg, corpus = method_scores(options.overrides, cf, host, ctx)
    train, queries = corpus.train, corpus.queries
    if any(k >= len(train) for k in cf.k):
        raise ConfigValueError("counterfactual.k", list(cf.k), f"integers < {len(train)} (training clips)")
    checker = None
    if describe is not None:
        names = list(corpus.class_names)
        checker = ModelChecker(train, names, cf.check_per_class, ctx, describe, context=queries)
    retrainer = Retrainer(adapter, train, queries, data_classes(train), list(cf.timesteps), ctx, checker)

    subsets = draw_subsets(len(train), cf.subsets, cf.fraction, ctx.rng("counterfactual-subsets"))
    retrained = retrain_query_indices(len(queries), cf.retrain_queries)
    parallel = None
    if cf.workers > 1:
        needed = models_needed(retrainer, scores, subsets, list(cf.k), retrained)
        parallel = pretrain_in_parallel(adapter, train, needed, retrainer.num_classes, ctx, cf.workers)
    outputs = subset_outputs(retrainer, subsets)  # name -> (S, Q)
    masks = subset_masks(subsets, len(train))
    lds: dict[str, dict[str, dict]] = {}  # stays empty for counterfactual.subsets=0 (no LDS)
    if len(subsets):
        lds = {
            method: {
                name: lds_summary(
                    lds_per_query(method_scores_, masks, outputs[name]),
                    cf.bootstrap,
                    cf.level,
                    ctx.rng("counterfactual-bootstrap", method, name),
                )
                for name in OUTPUT_NAMES
            }
            for method, method_scores_ in scores.items()
        }
    full_model = retrainer.measure(np.arange(len(train)), check=checker is not None)
    full = full_model.outputs
    rows: list[dict] = []
    if cf.k:
        rows = retrain_without_top_k(retrainer, scores, full, list(cf.k), retrained, full_model.check)
    document = {
        "settings": as_container(cf),
        "seed": cfg.seed,
        "dataset": as_container(cfg.dataset),
        "model": as_container(model_cfg),
        "queries": list(queries.ids),
        "num_train": len(train),
        "subsets": subsets.tolist(),
        "lds": lds,
        "retrain": {"summary": retrain_summary(rows), "rows": rows},
        "full_outputs": {name: [float(v) for v in full[name]] for name in OUTPUT_NAMES},
        # (S, Q) per output: with "subsets", enough to score another method's attributions offline
        "subset_outputs": {name: outputs[name].tolist() for name in OUTPUT_NAMES},
        "models": {
            "trained": retrainer.trained,
            "cached": retrainer.cached,
            "reused": retrainer.reused,
            "seconds": round(retrainer.seconds, 3),
            "parallel": parallel,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    if checker is not None and full_model.check is not None:
        # only for a conditional model: an unconditional run's document keeps its shape
        document["full_model_check"] = check_document(full_model.check, cf.check_per_class)
        document["models"]["checks"] = checker.checks
        document["models"]["check_seconds"] = round(checker.seconds, 3)
    write_counterfactual_outputs(document, output_dir)
    console = table_console()
    print_counterfactual(document, console)
    console.print(f"[dim]outputs: {output_dir}[/dim]")
    return 0
