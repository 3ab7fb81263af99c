"""``counterfactual.json``, ``lds.csv``, ``retrain.csv`` and the printed tables of ``mwga counterfactual``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.console import Console

from mwga_core.counterfactual.motion_check import CHECK_FIELDS
from mwga_core.counterfactual.outputs import OUTPUT_NAMES
from mwga_core.reporting.run_outputs import format_value, markdown_table, rich_table

#: the file names written into the output folder
JSON_NAME, LDS_CSV, RETRAIN_CSV, TABLE_NAME = "counterfactual.json", "lds.csv", "retrain.csv", "table.md"


def lds_rows(lds: dict[str, dict[str, dict]]) -> list[list[str]]:
    """One row per method: for each output, ``mean [low, high]``."""
    return [
        [method]
        + [
            f"{format_value(v['mean'], 3)} [{format_value(v['low'], 3)}, {format_value(v['high'], 3)}]"
            for v in (by_output[name] for name in OUTPUT_NAMES)
        ]
        for method, by_output in lds.items()
    ]


#: the model check's columns of the retraining table and of retrain.csv (conditional models only)
CHECK_KEYS: tuple[str, ...] = tuple(key for pair in CHECK_FIELDS for key in pair)
#: what the retraining table's title adds when it has the model check's columns
CHECK_TITLE = "; model check of the query's class: accuracy, drop = full - retrained"


def has_model_check(summary: list[dict]) -> bool:
    """Whether the retraining rows carry the model check (a conditional model's run)."""
    return bool(summary) and all("model_check" in row for row in summary)


def retrain_headers(summary: list[dict]) -> list[str]:
    """The retraining table's columns: the output changes, then the model check's mean accuracy of the
    query's class and its drop (full - retrained), plain and paired, where the rows have it."""
    headers = ["removal", "k", "queries", *(f"delta {n}" for n in OUTPUT_NAMES)]
    if has_model_check(summary):
        headers += ["check acc.", "check drop", "paired acc.", "paired drop"]
    return headers


def retrain_rows(summary: list[dict]) -> list[list[str]]:
    """One row per removal and k: the mean change of each output (and of the model check, if any)."""
    checked = has_model_check(summary)
    return [
        [row["removal"], str(row["k"]), str(row["queries"])]
        + [format_value(row["delta"][name], 5) for name in OUTPUT_NAMES]
        + ([format_value(row["model_check"][key], 3) for key in CHECK_KEYS] if checked else [])
        for row in summary
    ]


def write_counterfactual_outputs(document: dict, folder: Path) -> None:
    """Write the JSON document, the two CSVs and a Markdown table into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JSON_NAME).write_text(json.dumps(document, indent=2) + "\n")
    with open(folder / LDS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "output", "mean", "low", "high"])
        for method, by_output in document["lds"].items():
            for name, v in by_output.items():
                writer.writerow([method, name, v["mean"], v["low"], v["high"]])
    rows = document["retrain"]["rows"]
    checked = has_model_check(rows)
    with open(folder / RETRAIN_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        deltas = [f"delta_{n}" for n in OUTPUT_NAMES]
        check_columns = [f"check_{key}" for key in CHECK_KEYS] if checked else []
        writer.writerow(["query", "k", "removal", "removed", *deltas, "cached", *check_columns])
        for row in rows:
            deltas = [row["delta"][n] for n in OUTPUT_NAMES]
            checks = [row["model_check"][key] for key in CHECK_KEYS] if checked else []
            writer.writerow(
                [row["query"], row["k"], row["removal"], row["removed"], *deltas, row["cached"], *checks]
            )
    lds_headers = ["method", *(f"LDS {n}" for n in OUTPUT_NAMES)]
    summary = document["retrain"]["summary"]
    tables = [markdown_table(lds_headers, lds_rows(document["lds"]))] if document["lds"] else []
    tables.append(markdown_table(retrain_headers(summary), retrain_rows(summary)))
    (folder / TABLE_NAME).write_text("\n".join(tables))


def print_counterfactual(document: dict, console: Console) -> None:
    """The LDS table (mean and bootstrap interval per method and output) and the retraining table."""
    level = document["settings"]["level"]
    subsets = document["settings"]["subsets"]
    if document["lds"]:
        console.print(
            rich_table(
                f"LDS over {subsets} subsets (mean over queries, {level:.0%} bootstrap interval)",
                ["method", *(f"LDS {n}" for n in OUTPUT_NAMES)],
                lds_rows(document["lds"]),
            )
        )
    else:
        console.print(f"[dim]LDS: not run (counterfactual.subsets={subsets})[/dim]")
    summary = document["retrain"]["summary"]
    checked = has_model_check(summary)
    if summary:
        console.print(
            rich_table(
                "retrain without the top-k: mean change of the query's output (positive = removal hurt it)"
                + (CHECK_TITLE if checked else ""),
                retrain_headers(summary),
                retrain_rows(summary),
            )
        )
    models = document["models"]
    console.print(
        f"[dim]models: {models['trained']} trained, {models['cached']} from the model store "
        f"({models['reused']} removals repeated a model already measured), "
        f"{models['seconds']:.1f} s in the model stage; total {document['seconds']:.1f} s[/dim]"
    )
    full_check = document.get("full_model_check")
    if full_check is not None:
        console.print(
            f"[dim]model checks: {models['checks']} models, {full_check['samples_per_class']} samples per "
            f"class, {models['check_seconds']:.1f} s; the full model's mean accuracy "
            f"{sum(full_check['accuracy'].values()) / len(full_check['accuracy']):.3f} (paired "
            f"{sum(full_check['paired_accuracy'].values()) / len(full_check['paired_accuracy']):.3f}), "
            f"chance {full_check['chance']:.3f}[/dim]"
        )
