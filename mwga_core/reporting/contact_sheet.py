"""Contact sheets: a query video beside its top-ranked training clips, with colour-coded flow.

One row per clip: ``frames_shown`` frames spread over the clip, then the Middlebury colour coding
(:func:`mwga_core.reporting.flow_io.flow_to_colour`) of the flow at the same frames. Every row of a sheet uses
one speed scale (the largest flow speed on the sheet), so colours compare across rows; the query row
ends with the colour wheel as a legend (hue = direction, saturation = speed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from mwga_core.reporting.flow_io import flow_to_colour

PIXELS = 96  # every frame is drawn at about this many pixels square
GAP = 12


@dataclass
class SheetRow:
    """One row of a sheet.

    Shape:
        frames: (T, H, W, C) float in [0, 1], C in 1 or 3, or None when the clip could not be read.
        flow: (T-1, H, W, 2) float or None.
    """

    title: str
    frames: np.ndarray | None
    flow: np.ndarray | None


def _upscale(image: np.ndarray) -> np.ndarray:
    factor = max(1, PIXELS // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _picks(count: int, shown: int) -> np.ndarray:
    return np.unique(np.rint(np.linspace(0, count - 1, min(shown, count))).astype(int))


def _row_image(row: SheetRow, shown: int, max_radius: float, legend: np.ndarray | None) -> np.ndarray:
    """The row as one RGB uint8 image: frames | flows (| legend)."""
    if row.frames is None:
        return np.full((PIXELS, PIXELS * shown, 3), 128, dtype=np.uint8)
    frames = np.clip(np.asarray(row.frames, dtype=np.float32), 0, 1)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    tiles = [_upscale((frames[i] * 255).astype(np.uint8)) for i in _picks(len(frames), shown)]
    height = tiles[0].shape[0]
    gap = np.full((height, GAP, 3), 255, dtype=np.uint8)
    parts = [_side_by_side(tiles)]
    if row.flow is not None and len(row.flow):
        flows = [_upscale(flow_to_colour(row.flow[i], max_radius)) for i in _picks(len(row.flow), shown)]
        parts += [gap, _side_by_side(flows)]
    if legend is not None:
        parts += [gap, _fit(legend, height)]
    return np.concatenate(parts, axis=1)


def _side_by_side(tiles: list[np.ndarray], gap: int = 3) -> np.ndarray:
    """Tiles of one height left to right with thin white gaps between them."""
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts = [part for tile in tiles for part in (tile, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _fit(image: np.ndarray, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (height, height), interpolation=cv2.INTER_AREA)


def colour_wheel_image(size: int = 65) -> np.ndarray:
    """The flow colour coding of a disc of radius 1. Shape: returns (size, size, 3) uint8."""
    ys, xs = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    image = flow_to_colour(np.stack([xs, ys], axis=-1), max_radius=1.0)
    image[np.hypot(xs, ys) > 1.0] = 255
    return image


def render_contact_sheet(query: SheetRow, rows: list[SheetRow], frames_shown: int = 4) -> bytes:
    """Draw ``query`` above ``rows`` (best first); returns the PNG file's bytes, so a command can write
    it together with its other outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = [np.hypot(r.flow[..., 0], r.flow[..., 1]).max() for r in [query, *rows] if r.flow is not None]
    max_radius = float(max(speeds)) if speeds and max(speeds) > 0 else 1.0
    images = [_row_image(query, frames_shown, max_radius, colour_wheel_image())]
    images += [_row_image(row, frames_shown, max_radius, None) for row in rows]
    width = max(image.shape[1] for image in images)
    inches_per_pixel = 1 / 100
    figure, axes = plt.subplots(
        len(images),
        1,
        figsize=(
            max(6.0, width * inches_per_pixel + 0.4),
            sum(i.shape[0] + 34 for i in images) * inches_per_pixel,
        ),
        squeeze=False,
    )
    for axis, image, row, index in zip(axes[:, 0], images, [query, *rows], range(len(images)), strict=True):
        padded = np.full((image.shape[0], width, 3), 255, dtype=np.uint8)
        padded[:, : image.shape[1]] = image
        axis.imshow(padded, interpolation="nearest")
        axis.set_axis_off()
        weight = "bold" if index == 0 else "normal"
        axis.set_title(row.title, loc="left", fontsize=9, fontweight=weight, family="monospace")
    figure.suptitle(
        f"frames (left) and their optical flow (right; hue = direction, saturation = speed, "
        f"full colour = {max_radius:.2f} px/frame)",
        fontsize=8,
        x=0.01,
        ha="left",
    )
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100, facecolor="white")
    plt.close(figure)
    return png.getvalue()
