"""The paper's reported numbers (``mwga_core/reporting/paper_values.json``) and which experiment matches which table.

The JSON is package data, transcribed by hand from the paper's Tables 1-5; its ``notes`` list the
paper's own inconsistencies. Metric names follow results.json (``NDCG@20``, ``mean_gt_rank``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments: its table, its figures, and the override it sweeps.

    Attributes:
        table: key in paper_values.json, e.g. ``"table3"``.
        name: output file stem of the table, e.g. ``"table3_bins"`` (also the experiment preset's name).
        swept: the swept override, or None for the per-pattern main result.
        axis_label: how figures and tables name the swept value.
        figures: (file stem, metrics) per figure.
    """

    table: str
    name: str
    swept: str | None
    axis_label: str
    figures: tuple[tuple[str, tuple[str, ...]], ...]


EXPERIMENTS = (
    Experiment(
        "table1",
        "table1_main",
        None,
        "Pattern",
        (("fig1_precision_at_k", ("P@5", "P@10", "P@20")), ("fig2_score_gap", ("score_gap",))),
    ),
    Experiment(
        "table2",
        "table2_baselines",
        "method",
        "Method",
        (("fig3_baselines", ("P@20", "R@20", "MRR", "NDCG@20")),),
    ),
    Experiment(
        "table3", "table3_bins", "descriptor.bins", "HOOF bins B", (("fig4_bins", ("NDCG@20", "MRR")),)
    ),
    Experiment(
        "table4",
        "table4_projection",
        "projection.dim",
        "Projection dim P",
        (("fig5_projection", ("NDCG@20", "P@20")),),
    ),
    Experiment(
        "table5",
        "table5_corpus",
        "dataset.num_clips",
        "Training clips N",
        (("fig6_corpus_size", ("NDCG@20", "mean_gt_rank")),),
    ),
)


@cache
def paper_values() -> dict[str, Any]:
    """The parsed paper_values.json."""
    text = resources.files("mwga_core.reporting").joinpath("paper_values.json").read_text(encoding="utf-8")
    return json.loads(text)


def experiment_for(swept: list[str]) -> Experiment | None:
    """The paper experiment whose table a sweep over ``swept`` reproduces (ignoring seeds)."""
    if len(swept) > 1:
        return None
    key = swept[0] if swept else None
    return next((e for e in EXPERIMENTS if e.swept == key), None)


def paper_table(table: str) -> dict[str, Any]:
    return paper_values()["tables"][table]


def paper_metrics(table: str) -> list[str]:
    """The metrics the paper's table reports, in its column order."""
    return list(paper_table(table)["metrics"])


def method_row_key(method_name: str) -> str | None:
    """The paper's Table 2 row for one of our method labels: every ``ours*`` label is the paper's method."""
    if method_name.startswith("ours"):
        return "ours"
    return method_name if method_name in paper_values()["methods"] else None


def paper_value(table: str, row: str | None, metric: str) -> float | None:
    """The paper's number, or None where it reports none (an unknown row, a metric it lacks)."""
    if row is None:
        return None
    value = paper_table(table)["rows"].get(str(row), {}).get(metric)
    return None if value is None else float(value)


def pattern_label(pattern: str) -> str:
    return paper_values()["patterns"].get(pattern, pattern.replace("_", " "))


def method_label(method_name: str) -> str:
    """The paper's name for a method, with our label kept where it differs (e.g. ``ours_simulated``)."""
    key = method_row_key(method_name)
    if key is None:
        return method_name
    name = paper_values()["methods"][key]
    return name if key == method_name else f"{name} [{method_name}]"


def method_order(method_name: str) -> int:
    """Table 2's row order (random, appearance, flow magnitude, ours), unknown methods last."""
    keys = list(paper_values()["methods"])
    key = method_row_key(method_name)
    return keys.index(key) if key in keys else len(keys)
