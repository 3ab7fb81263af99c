"""Report tables: ours beside the paper's numbers, as markdown, CSV and LaTeX.

A table is a list of rows of cells; a cell is a label (str), one of our metrics over seeds
(:class:`~mwga_core.reporting.results.Stat`, shown ``mean ± std`` when there are several seeds), a paper
number (float) or nothing (None, shown ``-``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from mwga_core.reporting.paper import (
    Experiment,
    method_label,
    method_order,
    method_row_key,
    paper_metrics,
    paper_value,
    pattern_label,
)
from mwga_core.reporting.results import Group, ResultSet, Stat
from mwga_core.reporting.run_outputs import format_value, pretty_metric

Cell = str | Stat | float | None

#: the row label that closes Table 1; rendered after a rule
MEAN_ROW = "Mean"


@dataclass
class ReportTable:
    """A table with a file stem (``name``), a title and notes that say what was compared."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def has_paper(self) -> bool:
        return any(h.endswith(" (paper)") for h in self.headers)


def cell_text(cell: Cell, plus_minus: str = " ± ") -> str:
    """A cell as text: ``-`` for nothing, ``mean ± std`` for a metric over several seeds."""
    if cell is None:
        return "-"
    if isinstance(cell, str):
        return cell
    if isinstance(cell, Stat):
        if cell.n == 0 or math.isnan(cell.mean):
            return "-"
        text = format_value(cell.mean)
        if cell.n < 2:
            return text
        decimals = len(text.partition(".")[2])  # the std to the mean's precision: 18.15 ± 0.77
        return f"{text}{plus_minus}{cell.std:.{decimals}f}"
    return format_value(float(cell))


def to_markdown(table: ReportTable) -> str:
    """A GitHub markdown table under a bold title, notes below."""
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.headers) + " |")
    lines.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(table.headers))) + "|")
    lines += ["| " + " | ".join(cell_text(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += [""] + [f"_{note}_" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: ReportTable) -> str:
    """One column per header; a column of our metrics also gets ``<header> std`` and ``<header> n``."""
    stat_columns = {i for row in table.rows for i, c in enumerate(row) if isinstance(c, Stat)}
    headers: list[str] = []
    for i, header in enumerate(table.headers):
        headers += [header, f"{header} std", f"{header} n"] if i in stat_columns else [header]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row in table.rows:
        values: list[object] = []
        for i, cell in enumerate(row):
            if i in stat_columns:
                stat = cell if isinstance(cell, Stat) else Stat(math.nan, math.nan, 0)
                values += [
                    "" if math.isnan(stat.mean) else repr(stat.mean),
                    "" if math.isnan(stat.std) else repr(stat.std),
                    stat.n,
                ]
            else:
                values.append("" if cell is None else cell if isinstance(cell, str) else repr(float(cell)))
        writer.writerow(values)
    return out.getvalue()


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: ReportTable) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), ready to ``\\input`` into a table float."""
    spec = "l" + "r" * (len(table.headers) - 1)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in table.headers) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        if row[0] == MEAN_ROW:
            lines.append(r"\midrule")
        cells = [
            latex_escape(cell_text(c, plus_minus=" PLUSMINUS ")).replace("PLUSMINUS", r"$\pm$") for c in row
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _metric_columns(metrics: list[str], table: str | None, available: list[str]) -> list[tuple[str, bool]]:
    """(metric, with paper column) for every metric we have, the paper's first and in its order."""
    reported = paper_metrics(table) if table else []
    ordered = [m for m in reported if m in available] + [
        m for m in metrics if m not in reported and m in available
    ]
    return [(m, m in reported) for m in ordered]


def _headers(first: str, columns: list[tuple[str, bool]]) -> list[str]:
    headers = [first]
    for metric, with_paper in columns:
        headers.append(pretty_metric(metric))
        if with_paper:
            headers.append(f"{pretty_metric(metric)} (paper)")
    return headers


def _cells(
    stats: dict[str, Stat], columns: list[tuple[str, bool]], table: str | None, row: str | None
) -> list[Cell]:
    cells: list[Cell] = []
    for metric, with_paper in columns:
        cells.append(stats.get(metric))
        if with_paper:
            cells.append(paper_value(table, row, metric) if table else None)
    return cells


def setting_note(group: Group, swept: str | None = None) -> str:
    """What a group ran: method, gradient, corpus size, bins, projection dim, seeds; not the swept one."""
    include_method = swept != "method"
    parts = [f"method {group.method}"] if include_method else []
    for label, key in (
        ("gradient", "gradient.name"),
        ("N", "dataset.num_clips"),
        ("B", "descriptor.bins"),
        ("P", "projection.dim"),
    ):
        value = group.setting(key)
        if value is not None and key != swept and (include_method or label != "gradient"):
            parts.append(f"{label}={value}")
    seeds = group.seeds
    parts.append(f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± sample std over seeds {seeds}")
    return "Ours: " + ", ".join(parts) + "."


def per_pattern_table(result_set: ResultSet, experiment: Experiment, name: str) -> ReportTable:
    """The paper's Table 1 layout for a single setting: one row per pattern, then the mean."""
    group = result_set.groups[0]
    columns = _metric_columns(result_set.metric_names, experiment.table, result_set.metric_names)
    rows = [
        [pattern_label(pattern), *_cells(stats, columns, experiment.table, pattern)]
        for pattern, stats in group.per_pattern.items()
    ]
    rows.append([MEAN_ROW, *_cells(group.mean, columns, experiment.table, "mean")])
    notes = [
        setting_note(group),
        "The paper reports score gap and mean GT rank only for the mean (section 5.1).",
    ]
    return ReportTable(name, "Table 1: per-pattern attribution", _headers("Pattern", columns), rows, notes)


def sweep_table(result_set: ResultSet, experiment: Experiment, name: str) -> ReportTable:
    """Tables 2-5: one row per swept value (mean over patterns), the paper's metrics beside ours."""
    key = experiment.swept
    assert key is not None
    groups = result_set.groups
    if key == "method":
        groups = sorted(groups, key=lambda g: method_order(g.method))
    columns = [(m, True) for m in paper_metrics(experiment.table) if m in result_set.metric_names]
    rows: list[list[Cell]] = []
    for group in groups:
        if key == "method":
            label, row = method_label(group.method), method_row_key(group.method)
        else:
            label = row = group.values[key]
        rows.append([label, *_cells(group.mean, columns, experiment.table, row)])
    title = {
        "table2": "Table 2: baseline comparison",
        "table3": "Table 3: HOOF descriptor bins B",
        "table4": "Table 4: gradient projection dimension P",
        "table5": "Table 5: training corpus size N",
    }[experiment.table]
    notes = [f"{setting_note(groups[0], swept=key)} Each row sets {key}."]
    return ReportTable(name, title, _headers(experiment.axis_label, columns), rows, notes)


def summary_table(result_set: ResultSet, name: str = "summary") -> ReportTable:
    """Every metric of every group (mean over patterns), no paper columns: for any sweep."""
    headers = [*(result_set.swept or ["run"]), "seeds"] + [pretty_metric(m) for m in result_set.metric_names]
    rows: list[list[Cell]] = []
    for group in result_set.groups:
        labels: list[Cell] = [group.values[k] for k in result_set.swept] or [group.method]
        rows.append([*labels, str(len(group.jobs)), *(group.mean[m] for m in result_set.metric_names)])
    return ReportTable(name, f"Summary of {result_set.path}", headers, rows)
