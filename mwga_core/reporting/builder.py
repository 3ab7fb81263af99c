"""Build a report folder from finished runs: the paper's tables and figures that the results support.

What a folder supports follows from what its jobs swept (seeds aside):

========================  ===========================  ===============================
swept                     table                        figures
========================  ===========================  ===============================
nothing (one setting)     table1_main (per pattern)    fig1_precision_at_k, fig2_score_gap
``method``                table2_baselines             fig3_baselines
``descriptor.bins``       table3_bins                  fig4_bins
``projection.dim``        table4_projection            fig5_projection
``dataset.num_clips``     table5_corpus                fig6_corpus_size
anything else             summary only                 none
========================  ===========================  ===============================

Every folder also gets a ``summary`` table of all metrics. A folder holding several sweeps (e.g.
``multirun/``) gives one report over all of them; where two sweeps make the same table, the later path
(the newer ``<date>/<time>``) wins. A preset run with another method than the preset's own gets the
method in its file stems, e.g. ``table3_bins_ours`` for ``+experiment=table3_bins method=ours``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from mwga_core.reporting import figures
from mwga_core.reporting.paper import (
    Experiment,
    experiment_for,
    method_label,
    method_order,
    method_row_key,
    paper_value,
    pattern_label,
)
from mwga_core.reporting.results import ResultSet, load_result_sets
from mwga_core.reporting.run_outputs import pretty_metric, rich_table
from mwga_core.reporting.tables import (
    ReportTable,
    cell_text,
    per_pattern_table,
    summary_table,
    sweep_table,
    to_csv,
    to_latex,
    to_markdown,
)


@dataclass
class Report:
    """What :func:`build_report` wrote: tables (stem -> table), figure paths, the index page and its
    HTML twin (report.html: tables, figures inline, links to the run pages below the folder)."""

    out_dir: Path
    tables: dict[str, ReportTable] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    index: Path | None = None
    html: Path | None = None


#: the method every experiment preset runs unless ``method=...`` says otherwise (conf/experiment/)
PRESET_METHOD = "ours_simulated"


def _suffix(result_set: ResultSet, experiment: Experiment) -> str:
    """``_<method>`` when a preset ran another method than its own (``+experiment=table3_bins
    method=ours`` -> ``_ours``), ``_<rest>`` for a preset named after the table (``table3_bins_x`` ->
    ``_x``), nothing otherwise."""
    name = result_set.experiment_name
    if name == experiment.name and "method" not in result_set.swept:
        method = result_set.groups[0].method
        return "" if method == PRESET_METHOD else f"_{method}"
    if not name or name == experiment.name:
        return ""
    return "_" + name.removeprefix(experiment.name + "_")


def _setting(result_set: ResultSet) -> str:
    """The fixed part of a figure's setting for its title: method and N, unless swept."""
    group = result_set.groups[0]
    parts = [] if "method" in result_set.swept else [group.method]
    if "dataset.num_clips" not in result_set.swept and group.setting("dataset.num_clips") is not None:
        parts.append(f"N={group.setting('dataset.num_clips')}")
    seeds = max(len(g.jobs) for g in result_set.groups)
    if seeds > 1:
        parts.append(f"mean ± std over {seeds} seeds")
    return ", ".join(parts)


def _figures(result_set: ResultSet, experiment: Experiment, out_dir: Path, suffix: str) -> dict[str, Path]:
    made: dict[str, Path] = {}
    setting = _setting(result_set)
    if experiment.swept is None:
        group = result_set.groups[0]
        patterns = list(group.per_pattern)
        labels = [pattern_label(p) for p in patterns]
        (fig1, ks), (fig2, _) = experiment.figures
        series = [
            figures.Series(
                metric,
                [group.per_pattern[p][metric] for p in patterns],
                [paper_value("table1", p, metric) for p in patterns],
            )
            for metric in ks
            if metric in result_set.metric_names
        ]
        if series:
            name = fig1 + suffix
            made[name] = figures.grouped_bars(
                out_dir / f"{name}.png",
                labels,
                series,
                f"Figure 1: precision at k per pattern ({setting})",
                "precision",
            )
        if "score_gap" in result_set.metric_names:
            name = fig2 + suffix
            made[name] = figures.score_gap_bars(
                out_dir / f"{name}.png",
                labels,
                [group.per_pattern[p]["score_gap"] for p in patterns],
                group.mean["score_gap"],
                paper_value("table1", "mean", "score_gap"),
                f"Figure 2: score gap per pattern ({setting})",
            )
        return made
    ((stem, metrics),) = experiment.figures
    metrics = tuple(m for m in metrics if m in result_set.metric_names)
    if not metrics:
        return made
    name = stem + suffix
    if experiment.swept == "method":
        groups = sorted(result_set.groups, key=lambda g: method_order(g.method))
        series = [
            figures.Series(
                method_label(g.method),
                [g.mean[m] for m in metrics],
                [paper_value("table2", method_row_key(g.method), m) for m in metrics],
            )
            for g in groups
        ]
        made[name] = figures.grouped_bars(
            out_dir / f"{name}.png",
            [pretty_metric(m) for m in metrics],
            series,
            f"Figure 3: baseline comparison ({setting})",
            "value",
        )
        return made
    key = experiment.swept
    xs = [float(g.values[key]) for g in result_set.groups]
    panels = [
        figures.Panel(
            pretty_metric(m),
            [g.mean[m] for g in result_set.groups],
            [paper_value(experiment.table, g.values[key], m) for g in result_set.groups],
        )
        for m in metrics
    ]
    number = {"table3": 4, "table4": 5, "table5": 6}[experiment.table]
    made[name] = figures.ablation_lines(
        out_dir / f"{name}.png",
        experiment.axis_label,
        xs,
        panels,
        f"Figure {number}: {' and '.join(pretty_metric(m) for m in metrics)} vs {experiment.axis_label} ({setting})",
        log_x=all(x > 0 for x in xs),
    )
    return made


def _summary_name(result_set: ResultSet, root: Path) -> str:
    relative = result_set.path.relative_to(root) if result_set.path != root else Path()
    return "summary" if relative == Path() else "summary_" + "_".join(relative.parts)


def build_report(path: Path, out_dir: Path | None = None, console: Console | None = None) -> Report:
    """Write tables (.md, .csv, .tex), figures (.png) and report.md for the results at or below ``path``.

    Args:
        path: a run folder, a sweep folder, or a folder with several of them (e.g. ``multirun/``).
        out_dir: where to write; default ``<path>/report``.
        console: where to print the tables; None prints nothing.
    """
    path = Path(path)
    result_sets = load_result_sets(path)
    out_dir = Path(out_dir) if out_dir is not None else path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir)
    for result_set in result_sets:
        summary = summary_table(result_set, _summary_name(result_set, path))
        report.tables[summary.name] = summary
        experiment = experiment_for(result_set.swept)
        if experiment is None or (experiment.swept is None and len(result_set.groups) != 1):
            continue
        suffix = _suffix(result_set, experiment)
        name = experiment.name + suffix
        build = per_pattern_table if experiment.swept is None else sweep_table
        report.tables[name] = build(result_set, experiment, name)
        report.sources[name] = result_set.path
        for figure_name, figure_path in _figures(result_set, experiment, out_dir, suffix).items():
            report.figures[figure_name] = figure_path
            report.sources[figure_name] = result_set.path
    for name, table in report.tables.items():
        (out_dir / f"{name}.md").write_text(to_markdown(table))
        (out_dir / f"{name}.csv").write_text(to_csv(table))
        (out_dir / f"{name}.tex").write_text(to_latex(table))
    report.index = out_dir / "report.md"
    report.index.write_text(_index(report, path))
    report.html = out_dir / "report.html"
    report.html.write_text(_html(report, path), encoding="utf-8")
    if console is not None:
        _print(report, console)
    return report


def _index(report: Report, path: Path) -> str:
    lines = [f"# mwga report: {path}", ""]
    paper_tables = sorted(n for n in report.tables if not n.startswith("summary"))
    for name in paper_tables + sorted(n for n in report.tables if n.startswith("summary")):
        source = f" (from `{report.sources[name]}`)" if name in report.sources else ""
        lines += [
            to_markdown(report.tables[name]),
            f"Files: `{name}.md`, `{name}.csv`, `{name}.tex`{source}",
            "",
        ]
    for name, figure_path in sorted(report.figures.items()):
        lines += [f"![{name}]({figure_path.name})", ""]
    return "\n".join(lines)


def _html(report: Report, path: Path) -> str:
    """report.html: the tables and figures of report.md in one self-contained page, and links to the
    report.html of every run below ``path``."""
    from mwga_core.reporting.html_report import sweep_report_html

    names = sorted(n for n in report.tables if not n.startswith("summary"))
    names += sorted(n for n in report.tables if n.startswith("summary"))
    tables = [
        (
            f"{report.tables[n].title} [{n}]",
            report.tables[n].headers,
            [[cell_text(c) for c in row] for row in report.tables[n].rows],
        )
        for n in names
    ]
    runs = [
        (str(page.parent.relative_to(path.parent)), os.path.relpath(page, report.out_dir))
        for page in sorted(path.rglob("report.html"))
        if report.out_dir.resolve() not in page.resolve().parents
    ]
    figures = [report.figures[name] for name in sorted(report.figures)]
    return sweep_report_html(f"mwga report: {path}", tables, figures, runs)


def _paired(table: ReportTable) -> tuple[list[str], list[list[str]]]:
    """For a terminal: each metric and its paper column in one cell, ``ours / paper``."""
    headers: list[str] = []
    keep: list[list[int]] = []
    for i, header in enumerate(table.headers):
        if header.endswith(" (paper)") and keep:
            headers[-1] += " / paper"
            keep[-1].append(i)
        else:
            headers.append(header)
            keep.append([i])
    rows = [[" / ".join(cell_text(row[i]) for i in columns) for columns in keep] for row in table.rows]
    return headers, rows


def _print(report: Report, console: Console) -> None:
    paper_tables = {n: t for n, t in report.tables.items() if not n.startswith("summary")}
    for name, table in (paper_tables or report.tables).items():
        headers, rows = _paired(table)
        console.print(rich_table(f"{table.title} [{name}]", headers, rows))
    for figure_path in report.figures.values():
        console.print(f"[dim]figure: {figure_path}[/dim]")
    console.print(f"report: {report.index}")
