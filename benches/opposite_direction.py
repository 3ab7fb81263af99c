"""Direction probe: does a training clip that moves the *other* way help the model on a query?

On ``+benchmark=both_directions`` each class holds both senses of its motion (left and right pans), and
``method=ours`` ranks a query's opposite-sense class mates near the bottom (its time-odd feature flips sign
with the direction). Whether that is right is a counterfactual question, answered here by retraining:

* one model on every training clip (the reference);
* per directional class c and sense s, one model without ``--k`` random clips of class c moving in sense s
  (senses read from the exact flow, :mod:`mwga_core.counterfactual.direction`);
* ``--controls`` models without ``--k`` random clips of the ``random`` class (a removal of the same size
  that no directional query should feel).

For each query of a directional class, the change of its outputs (``loss`` and ``motion``, as
``mwga counterfactual`` measures them; positive = the removed clips helped the query) when clips of its
own class and *its own sense* are removed, when clips of its class and the *opposite sense* are removed,
when another directional class's clips are removed, and under the control removals. Prints one JSON
document (means over queries, with per-class means) and writes it to ``--out`` when given.

Every model goes through the model store, so a rerun (or ``mwga counterfactual`` with the same clips)
reuses it. About (2 x classes + controls + 1) trainings: 12 for the default, ~80 s each on 2 quiet cores.

Usage::

    python benches/opposite_direction.py [--seed 0] [--k 10] [--controls 1] [--out FILE] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.config.compose import compose
from mwga_core.config.schema import cache_path
from mwga_core.counterfactual.direction import clip_senses
from mwga_core.counterfactual.outputs import OUTPUT_NAMES
from mwga_core.counterfactual.retrain import Retrainer
from mwga_core.counterfactual.subsets import keep_without, random_removal
from mwga_core.pipeline.model_stage import data_classes
from mwga_core.pipeline.run import build_components
from mwga_core.pipeline.stages import load_corpus
from mwga_core.plugin_host.host import get_host
from mwga_core.storage.stage_cache import stage_cache_from_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="clips removed per retraining (10)")
    parser.add_argument("--controls", type=int, default=1, help="control removals from the random class")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after +benchmark=both_directions)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    host = get_host()
    base = ["+benchmark=both_directions", f"seed={args.seed}"]
    # the model retrained is the counterfactual protocols' (counterfactual.model), as in mwga counterfactual
    cf = compose([*base, *args.overrides], host=host).counterfactual
    cfg = compose([*base, f"model={cf.model}", *args.overrides], host=host)
    ctx = RunContext(seed=cfg.seed, device=cfg.device, cache_dir=cache_path(cfg.cache))
    components = build_components(cfg, host)
    corpus, _ = load_corpus(components.dataset, ctx, stage_cache_from_config(cfg, ctx))
    train, queries = corpus.train, corpus.queries
    if train.gt_flow is None or queries.gt_flow is None:
        raise SystemExit("the probe needs a dataset with exact flow (dataset=synthetic)")
    directional = [i for i, name in enumerate(corpus.class_names) if name != "random"]
    random_class = [i for i, name in enumerate(corpus.class_names) if name == "random"]
    train_senses, dominant = clip_senses(train.gt_flow, train.labels)
    query_senses, _ = clip_senses(queries.gt_flow, queries.labels)

    retrainer = Retrainer(
        host.build("model", cfg.model), train, queries, data_classes(train), list(cf.timesteps), ctx
    )
    full, _ = retrainer.outputs(np.arange(len(train)))
    removals: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # (class, sense) -> outputs
    for c in directional:
        for sense in (1, -1):
            members = np.flatnonzero((train.labels == c) & (train_senses == sense))
            if len(members) < args.k:
                raise SystemExit(f"class {corpus.class_names[c]} has {len(members)} clips of sense {sense}")
            removed = random_removal(len(train), args.k, ctx.rng("direction-probe", c, sense), among=members)
            removals[(c, sense)] = retrainer.outputs(keep_without(len(train), removed))[0]
    controls = []
    pool = np.flatnonzero(np.isin(train.labels, random_class))
    for i in range(args.controls):
        removed = random_removal(len(train), args.k, ctx.rng("direction-probe-control", i), among=pool)
        controls.append(retrainer.outputs(keep_without(len(train), removed))[0])

    deltas: dict[str, dict[str, list[float]]] = {
        kind: {name: [] for name in OUTPUT_NAMES}
        for kind in ("same_sense", "opposite_sense", "other_class", "control")
    }
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    for c in directional:
        rows = np.flatnonzero(queries.labels == c)
        class_deltas = {
            kind: {name: [] for name in OUTPUT_NAMES} for kind in ("same_sense", "opposite_sense")
        }
        for q in rows:
            s = int(query_senses[q])
            for name in OUTPUT_NAMES:
                same = removals[(c, s)][name][q] - full[name][q]
                opposite = removals[(c, -s)][name][q] - full[name][q]
                for kind, value in (("same_sense", same), ("opposite_sense", opposite)):
                    deltas[kind][name].append(float(value))
                    class_deltas[kind][name].append(float(value))
                others = [
                    removals[(o, t)][name][q] - full[name][q] for o in directional if o != c for t in (1, -1)
                ]
                deltas["other_class"][name].append(float(np.mean(others)))
                deltas["control"][name].extend(float(ctl[name][q] - full[name][q]) for ctl in controls)
        per_class[corpus.class_names[c]] = {
            kind: {name: float(np.mean(v)) for name, v in by_name.items()}
            for kind, by_name in class_deltas.items()
        }
        per_class[corpus.class_names[c]]["dominant_summary"] = dominant[c]  # type: ignore[assignment]

    document = {
        "benchmark": "both_directions",
        "seed": cfg.seed,
        "k": args.k,
        "model": cf.model,
        "timesteps": list(cf.timesteps),
        "queries": len(deltas["same_sense"]["loss"]),
        "mean_delta": {
            kind: {name: float(np.mean(v)) for name, v in by_name.items()} for kind, by_name in deltas.items()
        },
        "sem_delta": {
            kind: {
                name: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
                for name, v in by_name.items()
            }
            for kind, by_name in deltas.items()
        },
        "per_class": per_class,
        "models": {
            "trained": retrainer.trained,
            "cached": retrainer.cached,
            "seconds": round(retrainer.seconds, 1),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
