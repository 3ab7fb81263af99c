"""``counterfactual.json``, ``lds.csv``, ``retrain.csv`` and the printed tables of ``mwga counterfactual``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.console import Console

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


def retrain_rows(summary: list[dict]) -> list[list[str]]:
    """One row per removal and k: the mean change of each output."""
    return [
        [row["removal"], str(row["k"]), str(row["queries"])]
        + [format_value(row["delta"][name], 5) for name in OUTPUT_NAMES]
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
    with open(folder / RETRAIN_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "k", "removal", "removed", *(f"delta_{n}" for n in OUTPUT_NAMES), "cached"])
        for row in document["retrain"]["rows"]:
            deltas = [row["delta"][n] for n in OUTPUT_NAMES]
            writer.writerow([row["query"], row["k"], row["removal"], row["removed"], *deltas, row["cached"]])
    lds_headers = ["method", *(f"LDS {n}" for n in OUTPUT_NAMES)]
    retrain_headers = ["removal", "k", "queries", *(f"delta {n}" for n in OUTPUT_NAMES)]
    (folder / TABLE_NAME).write_text(
        markdown_table(lds_headers, lds_rows(document["lds"]))
        + "\n"
        + markdown_table(retrain_headers, retrain_rows(document["retrain"]["summary"]))
    )


def print_counterfactual(document: dict, console: Console) -> None:
    """The LDS table (mean and bootstrap interval per method and output) and the retraining table."""
    level = document["settings"]["level"]
    subsets = document["settings"]["subsets"]
    console.print(
        rich_table(
            f"LDS over {subsets} subsets (mean over queries, {level:.0%} bootstrap interval)",
            ["method", *(f"LDS {n}" for n in OUTPUT_NAMES)],
            lds_rows(document["lds"]),
        )
    )
    summary = document["retrain"]["summary"]
    if summary:
        console.print(
            rich_table(
                "retrain without the top-k: mean change of the query's output (positive = removal hurt it)",
                ["removal", "k", "queries", *(f"delta {n}" for n in OUTPUT_NAMES)],
                retrain_rows(summary),
            )
        )
    models = document["models"]
    console.print(
        f"[dim]models: {models['trained']} trained, {models['cached']} from the model store "
        f"({models['reused']} removals repeated a model already measured), "
        f"{models['seconds']:.1f} s in the model stage; total {document['seconds']:.1f} s[/dim]"
    )
