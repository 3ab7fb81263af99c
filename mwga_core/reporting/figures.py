"""Report figures as PNG: mwga's results (solid, seed error bars) beside the paper's (hatched or dashed).

matplotlib is imported inside the functions, with the Agg backend, so importing this module is cheap
and works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwga_core.reporting.results import Stat

#: one colour per series (k, method) in the grouped bars and per panel line
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
PAPER_HATCH = "///"
DPI = 110


@dataclass
class Series:
    """One bar series (e.g. P@5, or a method): our value per category and the paper's (None = not reported)."""

    label: str
    ours: list[Stat]
    paper: list[float | None]


@dataclass
class Panel:
    """One subplot of an ablation figure: a metric against the swept value."""

    metric: str
    ours: list[Stat]
    paper: list[float | None]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _means(stats: Sequence[Stat]) -> list[float]:
    return [s.mean for s in stats]


def _errors(stats: Sequence[Stat]) -> list[float] | None:
    """Error bar half-widths (sample std), or None when every value is a single seed."""
    if all(s.n <= 1 for s in stats):
        return None
    return [0.0 if math.isnan(s.std) else s.std for s in stats]


def _clip_bottom(ax: Any, values: list[float]) -> None:
    """Start the y axis at 0 unless a value is negative, so error bars cannot suggest negative precision."""
    finite = [v for v in values if not math.isnan(v)]
    low = min(finite, default=0.0)
    if low >= 0:
        ax.set_ylim(bottom=0)


def grouped_bars(
    path: Path,
    categories: list[str],
    series: list[Series],
    title: str,
    y_label: str,
    ours_label: str = "mwga",
) -> Path:
    """Bars per category; within a category our bar and, hatched beside it, the paper's, per series.

    Shape:
        every ``Series.ours`` and ``Series.paper`` has ``len(categories)`` entries.
    """
    plt = _pyplot()
    any_paper = any(v is not None for s in series for v in s.paper)
    per_series = 2 if any_paper else 1
    width = 0.84 / (len(series) * per_series)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(categories) + 2.5), 4.2))
    for index, s in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        offset = -0.42 + width * (index * per_series + 0.5)
        xs = [c + offset for c in range(len(categories))]
        ax.bar(
            xs,
            _means(s.ours),
            width,
            yerr=_errors(s.ours),
            capsize=2,
            color=colour,
            label=f"{s.label} ({ours_label})",
            edgecolor=colour,
        )
        if any_paper:
            known = [(x + width, v) for x, v in zip(xs, s.paper, strict=True) if v is not None]
            if known:
                ax.bar(
                    [x for x, _ in known],
                    [v for _, v in known],
                    width,
                    color="white",
                    edgecolor=colour,
                    hatch=PAPER_HATCH,
                    label=f"{s.label} (paper)",
                )
                for x, v in known:
                    if v == 0:  # a zero-height bar is invisible: say it is a reported zero, not a gap
                        ax.annotate(
                            "0",
                            (x, 0),
                            xytext=(0, 2),
                            textcoords="offset points",
                            ha="center",
                            va="bottom",
                            fontsize=7,
                            color=colour,
                        )
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel(y_label)
    _clip_bottom(ax, [v for s in series for v in _means(s.ours) + [p for p in s.paper if p is not None]])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def score_gap_bars(
    path: Path, patterns: list[str], ours: list[Stat], ours_mean: Stat, paper_mean: float | None, title: str
) -> Path:
    """Our score gap per pattern; the paper reports only its mean, drawn as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    ax.bar(
        range(len(patterns)),
        _means(ours),
        0.6,
        yerr=_errors(ours),
        capsize=3,
        color=COLOURS[0],
        label="mwga, per pattern",
    )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.axhline(
        ours_mean.mean,
        color=COLOURS[0],
        linestyle=":",
        linewidth=1.4,
        label=f"mwga, mean over patterns ({ours_mean.mean:+.4f})",
    )
    if paper_mean is not None:
        ax.axhline(
            paper_mean,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"paper, mean over patterns ({paper_mean:+.4f}); no per-pattern values",
        )
    ax.set_xticks(range(len(patterns)), patterns)
    ax.set_ylabel("score gap (GT minus non-GT)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(
        range(len(labels)), key=lambda i: (not labels[i].startswith("mwga"), labels[i] != "mwga, per pattern")
    )
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        frameon=False,
        ncol=1,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def ablation_lines(
    path: Path, x_label: str, xs: list[float], panels: list[Panel], title: str, log_x: bool = True
) -> Path:
    """One subplot per metric: ours (solid, error bars over seeds) and the paper (dashed) against x."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        ax.errorbar(
            xs,
            _means(panel.ours),
            yerr=_errors(panel.ours),
            marker="o",
            color=COLOURS[0],
            capsize=3,
            label="mwga",
        )
        known = [(x, v) for x, v in zip(xs, panel.paper, strict=True) if v is not None]
        if known:
            ax.plot(
                [x for x, _ in known],
                [v for _, v in known],
                linestyle="--",
                marker="s",
                markerfacecolor="white",
                color="black",
                label="paper",
            )
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_title(panel.metric, fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] != "mwga")
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
