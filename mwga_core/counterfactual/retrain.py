"""Models retrained on part of the training clips, through the ``model`` stage and its model store.

Every retrained model goes through :func:`~mwga_core.pipeline.model_stage.load_or_train_model`, so it is
kept in the model store under a key of its training clips: methods, reruns and an interrupted run that
is started again reuse every model already finished. :class:`Retrainer` counts what it trained and what
it read from the store. With a conditional model it can also run the model check of each model of the
retrain-without-top-k protocol (:mod:`mwga_core.counterfactual.motion_check`), once per model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter
from mwga_core.counterfactual.motion_check import ModelChecker, check_row, check_summary
from mwga_core.counterfactual.outputs import OUTPUT_NAMES, model_outputs
from mwga_core.counterfactual.subsets import keep_without, random_removal, top_k
from mwga_core.diffusion.model_check import MotionCheck
from mwga_core.pipeline.model_stage import load_or_train_model

#: the removal of k random training clips, and of k random clips of the query's class (the label oracle)
RANDOM_REMOVAL, LABEL_ORACLE = "k random clips", "k random clips of the class"


@dataclass
class Measured:
    """What was measured of one model: its outputs (name -> (Q,)), whether it came from the store (or was
    already measured in this run), and its model check (``None`` until one is asked for)."""

    outputs: dict[str, np.ndarray]
    cached: bool
    check: MotionCheck | None = None


@dataclass
class Retrainer:
    """Trains (or reads) the model of a subset of ``train`` and measures its outputs on ``queries``.

    Attributes:
        checker: for a conditional model, the model check :meth:`measure` runs when asked (else None).
        trained / cached: models trained by this run / read from the model store.
        reused: requests for a model this run already measured (the same clips twice).
        seconds: wall time spent in the model stage (training or reading).
    """

    adapter: ModelAdapter
    train: ClipSet
    queries: ClipSet
    num_classes: int
    timesteps: Sequence[int]
    ctx: RunContext
    checker: ModelChecker | None = None
    trained: int = 0
    cached: int = 0
    reused: int = 0
    seconds: float = 0.0
    _memo: dict[tuple[int, ...], Measured] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a model given as trained weights would be "retrained" into itself for every subset
        if self.adapter.config.checkpoint:
            raise ConfigValueError(
                "model.checkpoint",
                self.adapter.config.checkpoint,
                '"" (the counterfactual protocols retrain the model on subsets of the training clips; '
                "they cannot retrain a given checkpoint)",
            )

    def outputs(self, keep: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Outputs (name -> (Q,)) of the model trained on the clips ``keep`` (indices), and whether that
        model came from the store (or was already measured in this run)."""
        measured = self.measure(keep)
        return measured.outputs, measured.cached

    def measure(self, keep: np.ndarray, check: bool = False) -> Measured:
        """The outputs of the model trained on the clips ``keep`` (indices) and, with ``check`` and a
        :attr:`checker`, its model check. Both are kept by the clips, so each model is measured and
        checked once; a model measured before without its check is read again for it."""
        signature = tuple(int(i) for i in keep)
        check = check and self.checker is not None
        measured = self._memo.get(signature)
        if measured is not None and (measured.check is not None or not check):
            self.reused += 1
            return dataclasses.replace(measured, cached=True)
        start = time.perf_counter()
        model = load_or_train_model(self.adapter, self.train.subset(keep), self.ctx, self.num_classes)
        self.seconds += time.perf_counter() - start
        reused = measured is not None
        if measured is None:
            if model.loaded_from_cache:
                self.cached += 1
            else:
                self.trained += 1
            outputs = model_outputs(model, self.queries, self.timesteps, self.ctx)
            measured = self._memo[signature] = Measured(outputs, model.loaded_from_cache)
        else:
            self.reused += 1
        if check and self.checker is not None:
            measured.check = self.checker(model)
        return dataclasses.replace(measured, cached=True) if reused else measured


def subset_outputs(retrainer: Retrainer, subsets: np.ndarray) -> dict[str, np.ndarray]:
    """Each subset model's outputs. Shape: subsets (S, m) -> name -> (S, Q) float64 (S may be 0)."""
    if len(subsets) == 0:
        return {name: np.empty((0, len(retrainer.queries))) for name in OUTPUT_NAMES}
    rows = []
    with retrainer.ctx.progress("LDS subset models", len(subsets)) as progress:
        for indices in subsets:
            rows.append(retrainer.outputs(indices)[0])
            progress.advance(1)
    return {name: np.stack([row[name] for row in rows]) for name in OUTPUT_NAMES}


def removal_sets(
    scores: dict[str, np.ndarray],
    query: int,
    query_label: int,
    train_labels: np.ndarray,
    k: int,
    ctx: RunContext,
) -> dict[str, np.ndarray]:
    """What to remove for one query and k: each method's top-k, k random clips (:data:`RANDOM_REMOVAL`)
    and k random clips of the query's class (:data:`LABEL_ORACLE`). ``scores``: method -> (Q, N)."""
    clash = {RANDOM_REMOVAL, LABEL_ORACLE} & set(scores)
    if clash:
        raise ValueError(f"method names {sorted(clash)} are reserved for the baseline removals")
    num_clips = len(train_labels)
    sets = {method: top_k(method_scores[query], k) for method, method_scores in scores.items()}
    sets[RANDOM_REMOVAL] = random_removal(num_clips, k, ctx.rng("counterfactual-random", query, k))
    same_class = np.flatnonzero(train_labels == query_label)
    sets[LABEL_ORACLE] = random_removal(
        num_clips, k, ctx.rng("counterfactual-class", query, k), among=same_class
    )
    return sets


def models_needed(
    retrainer: Retrainer,
    scores: dict[str, np.ndarray],
    subsets: np.ndarray,
    ks: Sequence[int],
    query_indices: Sequence[int],
) -> list[np.ndarray]:
    """The clip indices of every model both protocols train: the LDS ``subsets`` (S, m), the full
    model, and each query's removals for each k (as :func:`retrain_without_top_k` draws them)."""
    train, queries = retrainer.train, retrainer.queries
    keeps = [*subsets, np.arange(len(train))]
    for q in query_indices:
        for k in ks:
            sets = removal_sets(scores, q, int(queries.labels[q]), train.labels, k, retrainer.ctx)
            keeps.extend(keep_without(len(train), removed) for removed in sets.values())
    return keeps


def retrain_without_top_k(
    retrainer: Retrainer,
    scores: dict[str, np.ndarray],
    full: dict[str, np.ndarray],
    ks: Sequence[int],
    query_indices: Sequence[int],
    full_check: MotionCheck | None = None,
) -> list[dict]:
    """One row per query, k and removal: the change of each output (without - full; positive = the
    removed clips helped the query) and whether the model was cached; with ``full_check`` (and the
    retrainer's checker) also ``model_check``, the query's class's accuracies and their drops
    (:func:`~mwga_core.counterfactual.motion_check.check_row`).

    Args:
        scores: method -> (Q, N) attribution scores.
        full: name -> (Q,) outputs of the model trained on every clip.
        full_check: the model check of the model trained on every clip (conditional models only).
    """
    train, queries = retrainer.train, retrainer.queries
    checker = retrainer.checker if full_check is not None else None
    rows = []
    total = len(query_indices) * len(ks) * (len(scores) + 2)
    with retrainer.ctx.progress("retrain without top-k", total) as progress:
        for q in query_indices:
            for k in ks:
                sets = removal_sets(scores, q, int(queries.labels[q]), train.labels, k, retrainer.ctx)
                for removal, removed in sets.items():
                    measured = retrainer.measure(keep_without(len(train), removed), check=checker is not None)
                    outputs = measured.outputs
                    row = {
                        "query": queries.ids[q],
                        "k": int(k),
                        "removal": removal,
                        "removed": len(removed),
                        "delta": {name: float(outputs[name][q] - full[name][q]) for name in OUTPUT_NAMES},
                        "cached": measured.cached,
                    }
                    if checker is not None and full_check is not None and measured.check is not None:
                        class_name = checker.class_names[int(queries.labels[q])]
                        row["model_check"] = check_row(full_check, measured.check, class_name)
                    rows.append(row)
                    progress.advance(1)
    return rows


def retrain_summary(rows: list[dict]) -> list[dict]:
    """Mean change per (removal, k) over queries: ``{removal, k, queries, delta: {name: mean}}``, and
    ``model_check`` (the mean accuracies and drops) where the rows have one."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["removal"], row["k"]), []).append(row)
    summary = []
    for (removal, k), group in groups.items():
        mean = {
            "removal": removal,
            "k": k,
            "queries": len(group),
            "delta": {name: float(np.mean([r["delta"][name] for r in group])) for name in OUTPUT_NAMES},
        }
        if all("model_check" in r for r in group):
            mean["model_check"] = check_summary(group)
        summary.append(mean)
    return summary
