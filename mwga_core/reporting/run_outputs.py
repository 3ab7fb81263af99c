"""Tables people read (rich, markdown) and files programs read (JSON, CSV) for one run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from mwga_core.api.results import AttributionResult
from mwga_core.evaluation.metrics import Evaluation

if TYPE_CHECKING:
    from mwga_core.config.schema import MwgaConfig


def table_console() -> Console:
    """A stdout console; tables are wider than 80 columns, so pipes and files get 160."""
    return Console(width=None if Console().is_terminal else 160)


PRETTY_METRICS = {"score_gap": "Score gap", "mean_gt_rank": "Mean GT rank"}


def pretty_metric(name: str) -> str:
    return PRETTY_METRICS.get(name, name)


def pretty_pattern(name: str) -> str:
    return name.replace("_", " ")


def format_value(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.{digits}f}"


def metric_rows(evaluation: Evaluation, names: list[str]) -> list[list[str]]:
    """The paper's Table 1 layout: one row per pattern, then the mean."""
    rows = [
        [pretty_pattern(p)] + [format_value(m[n]) for n in names] for p, m in evaluation.per_pattern.items()
    ]
    rows.append(["Mean"] + [format_value(evaluation.mean[n]) for n in names])
    return rows


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row_index, row in enumerate(rows):
        table.add_row(
            *row, end_section=row_index == len(rows) - 2 and row[0] != "Mean" and rows[-1][0] == "Mean"
        )
    return table


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def results_document(result: AttributionResult, cfg: MwgaConfig) -> dict[str, Any]:
    """Everything results.json holds; a pure function of the config and seed (no times, no paths)."""
    corpus = result.corpus
    per_query = [
        {"query_id": qid, "pattern": corpus.class_names[label] if label >= 0 else None, **metrics}
        for qid, label, metrics in zip(
            corpus.queries.ids, corpus.queries.labels, result.evaluation.per_query, strict=True
        )
    ]
    # the same dict (keys in field order) as the composed DictConfig Hydra wrote to .hydra/config.yaml
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    # Where the cache lives changes no number; keeping the machine's path would make results.json
    # differ between machines, users and MWGA_CACHE_DIR settings for the same config and seed.
    config.pop("cache", None)
    return _clean(
        {
            "method": cfg.method_name,
            "config": config,
            "corpus": {
                "num_train": len(corpus.train),
                "num_queries": len(corpus.queries),
                "class_names": list(corpus.class_names),
            },
            "static_training_clips": result.static_training_ids,
            **({"skipped_files": corpus.skipped} if corpus.skipped else {}),
            "metrics": {"per_pattern": result.evaluation.per_pattern, "mean": result.evaluation.mean},
            "per_query": per_query,
        }
    )


def write_run_outputs(
    result: AttributionResult, cfg: MwgaConfig, output_dir: Path, metric_names: list[str]
) -> None:
    """results.json, metrics.csv, table.md, (unless disabled) rankings.csv and report.html
    (:mod:`mwga_core.reporting.html_report`) in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    document = results_document(result, cfg)
    (output_dir / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")

    headers = ["Pattern"] + [pretty_metric(n) for n in metric_names]
    rows = metric_rows(result.evaluation, metric_names)
    (output_dir / "table.md").write_text(markdown_table(headers, rows))
    with open(output_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pattern"] + metric_names)
        for pattern, metrics in list(result.evaluation.per_pattern.items()) + [
            ("mean", result.evaluation.mean)
        ]:
            writer.writerow([pattern] + [metrics[n] for n in metric_names])

    if cfg.save_rankings:
        write_rankings(result, output_dir / "rankings.csv")
    from mwga_core.reporting.html_report import write_run_report  # Pillow, only when writing

    write_run_report(result, cfg.method_name, output_dir, headers, rows, metric_names)


def write_rankings(result: AttributionResult, path: Path) -> None:
    """One row per (query, rank): the full ranking of every query."""
    corpus = result.corpus
    names = corpus.class_names
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query_id", "query_pattern", "rank", "clip_id", "clip_pattern", "score", "relevant"])
        for q, query_id in enumerate(corpus.queries.ids):
            query_label = corpus.queries.labels[q]
            for rank, clip in enumerate(result.rankings[q], start=1):
                clip_label = corpus.train.labels[clip]
                writer.writerow(
                    [
                        query_id,
                        names[query_label] if query_label >= 0 else "",
                        rank,
                        corpus.train.ids[clip],
                        names[clip_label] if clip_label >= 0 else "",
                        repr(float(result.scores[q, clip])),
                        int(clip_label == query_label) if query_label >= 0 else "",
                    ]
                )
