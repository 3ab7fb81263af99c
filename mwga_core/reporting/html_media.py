"""Pictures for the HTML report (:mod:`mwga_core.reporting.html_report`), as ``data:`` URIs and SVG.

A clip of T frames becomes ONE still image, its frames side by side (a sprite strip), encoded as PNG by
Pillow (no codec is written here). The page's player shows frame ``f mod T`` of every strip at once by
moving each strip's background, so all clips of a page loop in sync and can be paused and stepped,
which animated images (each with its own clock, started when it is decoded) cannot promise. A strip
keeps the clip's own resolution, capped at :data:`MAX_SIDE` pixels and :data:`MAX_FRAMES` frames; the
page enlarges it with nearest-neighbour sampling (CSS ``image-rendering: pixelated``), so the motion of
a 32-pixel clip is visible at no cost in file size. Flow is drawn with the Middlebury colour wheel of
:mod:`mwga_core.reporting.flow_io`, one speed scale per clip.

Charts are small inline SVG drawn here from numbers (no matplotlib, which a cached run must not pay
for): score histograms, per-region heat maps and grouped bars.
"""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np

from mwga_core.reporting.flow_io import flow_to_colour

#: a strip's frames are shrunk (box filter) until their longer side is at most this
MAX_SIDE = 96
#: longer clips are shown with this many frames, evenly spaced
MAX_FRAMES = 32
#: PNG's strongest deflate level: 32x32 strips encode in about a millisecond
PNG_LEVEL = 9


def png_data_uri(image: np.ndarray) -> str:
    """A PNG ``data:`` URI of an image; a grey image is stored with one channel.

    Shape:
        image: (H, W) or (H, W, 3) uint8.
    """
    from PIL import Image

    if image.ndim == 3 and (image == image[..., :1]).all():
        image = image[..., 0]  # grey: a third of the bytes to compress
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def as_rgb8(frames: np.ndarray) -> np.ndarray:
    """Clip frames as RGB bytes.

    Shape:
        frames: (T, H, W, C) float in [0, 1] (C = 1 or 3) or uint8; returns (T, H, W, 3) uint8.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = np.rint(np.clip(np.nan_to_num(frames.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)
    if frames.ndim == 3:
        frames = frames[..., None]
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames[..., :3]


def fit_clip(frames: np.ndarray, max_side: int = MAX_SIDE, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """At most ``max_frames`` frames (evenly spaced) of at most ``max_side`` pixels (box-filtered).

    Shape:
        frames: (T, H, W, 3) uint8; returns (T', H', W', 3) uint8.
    """
    if len(frames) > max_frames:
        frames = frames[np.rint(np.linspace(0, len(frames) - 1, max_frames)).astype(int)]
    height, width = frames.shape[1:3]
    if max(height, width) <= max_side:
        return frames
    from PIL import Image

    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames])


def strip(frames: np.ndarray) -> np.ndarray:
    """The frames side by side. Shape: (T, H, W, 3) -> (H, T * W, 3)."""
    return np.concatenate(list(frames), axis=1)


def clip_sprite(frames: np.ndarray) -> tuple[str, int, int, int]:
    """A clip's sprite strip: (data URI, frames, height, width of one frame).

    Shape:
        frames: (T, H, W, C) float in [0, 1] or uint8.
    """
    fitted = fit_clip(as_rgb8(frames))
    return png_data_uri(strip(fitted)), len(fitted), fitted.shape[1], fitted.shape[2]


def flow_sprite(flow: np.ndarray) -> tuple[str, int, int, int, float]:
    """The colour-wheel picture of every flow field as a sprite strip; full colour = the clip's
    largest finite speed. Returns (data URI, frames, height, width, that speed in px/frame).

    Shape:
        flow: (T-1, H, W, 2) float ``(dx, dy)`` pixels.
    """
    speed = np.hypot(flow[..., 0], flow[..., 1])
    finite = speed[np.isfinite(speed)]
    max_radius = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    coloured = np.stack([flow_to_colour(field, max_radius) for field in flow])
    uri, count, height, width = clip_sprite(coloured)
    return uri, count, height, width, max_radius


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as a black-red-yellow-white ramp ("hot"). Shape: (...) -> (..., 3) uint8."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return np.rint(rgb * 255).astype(np.uint8)


def mask_sprite(mask: np.ndarray) -> tuple[str, int, int, int]:
    """A per-frame mask in [0, 1] as a sprite strip of heat colours.

    Shape:
        mask: (T, H, W) float.
    """
    return clip_sprite(heat_colours(mask))


def diverging_colour(value: float) -> str:
    """``value`` in [-1, 1] as a CSS colour: blue (negative), white (0), red (positive)."""
    v = float(np.clip(np.nan_to_num(value), -1.0, 1.0))
    fade = round(255 * (1 - abs(v)))
    return f"rgb(255,{fade},{fade})" if v >= 0 else f"rgb({fade},{fade},255)"


def region_map_svg(contributions: np.ndarray, scale: float, size: int = 48) -> str:
    """A regions x regions grid of contributions to a score, coloured by ``contribution / scale``,
    each cell's value in its tooltip.

    Shape:
        contributions: (r, r) float, row by row from the frame's top left.
    """
    rows, columns = contributions.shape
    cell_h, cell_w = size / rows, size / columns
    cells = []
    for i in range(rows):
        for j in range(columns):
            value = float(contributions[i, j])
            cells.append(
                f'<rect x="{j * cell_w:.1f}" y="{i * cell_h:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                f'fill="{diverging_colour(value / scale if scale > 0 else 0.0)}" stroke="#888" stroke-width="0.5">'
                f"<title>region ({i + 1}, {j + 1}): {value:+.4f}</title></rect>"
            )
    return (
        f'<svg class="regions" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="contribution of each query region">{"".join(cells)}</svg>'
    )


def histogram_svg(scores: np.ndarray, marks: np.ndarray, width: int = 360, height: int = 60) -> str:
    """The distribution of a query's scores over all clips (40 bins) with ``marks`` (its top clips'
    scores) as red ticks.

    Shape:
        scores: (N,) float; marks: (k,) float.
    """
    scores = np.asarray(scores, dtype=np.float64)
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        high = low + 1.0
    counts, _ = np.histogram(scores, bins=40, range=(low, high))
    bar_w = width / len(counts)
    peak = max(int(counts.max()), 1)
    plot_h = height - 14
    bars = [
        f'<rect x="{i * bar_w:.1f}" y="{plot_h - plot_h * c / peak:.1f}" width="{bar_w - 0.5:.1f}" '
        f'height="{plot_h * c / peak:.1f}" fill="#9aa"/>'
        for i, c in enumerate(counts)
    ]
    ticks = [
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{plot_h}" stroke="#c00" stroke-width="1"/>'
        for x in ((np.asarray(marks, dtype=np.float64) - low) / (high - low) * width)
    ]
    labels = (
        f'<text x="0" y="{height - 2}" font-size="10">{low:+.3f}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{high:+.3f}</text>'
    )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="score distribution">{"".join(bars)}{"".join(ticks)}{labels}</svg>'
    )


def grouped_bars_svg(
    title: str, groups: list[str], series: list[tuple[str, list[float | None]]], width: int = 640
) -> str:
    """A grouped bar chart: one group of bars per entry of ``groups``, one bar per series (a missing
    value leaves a gap), from 0. A series named ``"<name> (paper)"`` takes the colour of ``<name>``,
    paler, so the paper's number stands beside ours.

    Shape:
        series: (name, one value per group) for each series.
    """
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22"]
    names = [name for name, _ in series]
    own = [name for name in names if not name.endswith(" (paper)")]

    def colour(name: str) -> tuple[str, float]:
        base = name.removesuffix(" (paper)")
        position = own.index(base) if base in own else names.index(name)
        return palette[position % len(palette)], 0.4 if name.endswith(" (paper)") else 1.0

    legend_rows = 1 + (sum(len(n) * 6 + 24 for n in names) + 40) // width
    height, top, bottom, left = 200 + 14 * legend_rows, 24, 26 + 14 * legend_rows, 40
    plot_h = height - top - bottom
    finite = [v for _, vs in series for v in vs if v is not None and np.isfinite(v)]
    peak = max((abs(v) for v in finite), default=1.0) or 1.0
    zero = top + plot_h * (peak / (peak - min(min(finite, default=0.0), 0.0)))
    unit = (zero - top) / peak
    group_w = (width - left) / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    parts = [f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    parts.append(f'<line x1="{left}" x2="{width}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#333"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak:.2f}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, (name, values) in enumerate(series):
            value = values[g]
            if value is None or not np.isfinite(value):
                continue
            fill, opacity = colour(name)
            bar_h = abs(value) * unit
            parts.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{zero - bar_h if value >= 0 else zero:.1f}" '
                f'width="{bar_w - 1:.1f}" height="{bar_h:.1f}" fill="{fill}" fill-opacity="{opacity}">'
                f"<title>{escape(group)}, {escape(name)}: {value:.4f}</title></rect>"
            )
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - bottom + 14}" '
            f'font-size="10" text-anchor="middle">{escape(group)}</text>'
        )
    x, y = left, height - 14 * legend_rows
    for name in names:
        step = len(name) * 6 + 24
        if x + step > width:
            x, y = left, y + 14
        fill, opacity = colour(name)
        parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{fill}" fill-opacity="{opacity}"/>'
            f'<text x="{x + 14}" y="{y + 9}" font-size="10">{escape(name)}</text>'
        )
        x += step
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">{"".join(parts)}</svg>'
    )


def pattern_figures(
    per_pattern: dict[str, dict[str, float]], metric_names: list[str]
) -> list[tuple[str, str]]:
    """Figures 1 (precision at k per pattern) and 2 (score gap per pattern) as SVG, beside the paper's
    numbers where it reports the pattern."""
    from mwga_core.reporting.paper import paper_value, pattern_label

    patterns = list(per_pattern)
    labels = [pattern_label(p) for p in patterns]
    made = []
    precision = [m for m in ("P@5", "P@10", "P@20") if m in metric_names]
    if patterns and precision:
        series = [(m, [per_pattern[p][m] for p in patterns]) for m in precision]
        series += [
            (f"{m} (paper)", [paper_value("table1", p, m) for p in patterns])
            for m in precision
            if any(paper_value("table1", p, m) is not None for p in patterns)
        ]
        made.append(("Figure 1", grouped_bars_svg("precision at k per pattern", labels, series)))
    if patterns and "score_gap" in metric_names:
        series = [("score gap", [per_pattern[p]["score_gap"] for p in patterns])]
        paper = [paper_value("table1", p, "score_gap") for p in patterns]
        if any(v is not None for v in paper):
            series.append(("score gap (paper)", paper))
        made.append(("Figure 2", grouped_bars_svg("score gap per pattern", labels, series)))
    return made
