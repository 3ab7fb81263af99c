"""Optical-flow files and pictures: Middlebury ``.flo`` read/write and colour-wheel PNGs.

``.flo`` layout (Baker et al., Middlebury flow benchmark), little-endian: the float32 tag 202021.25
(the bytes ``PIEH``), int32 width, int32 height, then ``height * width`` interleaved float32 ``(u, v)``
pairs, row by row. ``u`` is the horizontal displacement (right positive), ``v`` the vertical one
(down positive), the same ``(dx, dy)`` order as :class:`mwga_core.api.clips.ClipSet` flow.

The colour coding is the Middlebury colour wheel: hue gives the direction (right = red, down =
yellow, left = cyan, up = blue-violet in image coordinates), saturation the speed relative to a maximum
radius; a zero flow is white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mwga_core.api.errors import DataError

FLO_TAG = 202021.25
_HEADER_BYTES = 12
#: a sanity bound: a .flo side larger than this is taken as a corrupt header, not a real image
_MAX_SIDE = 1 << 16


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write one flow field as a ``.flo`` file.

    Shape:
        flow: (H, W, 2) float, ``(u, v)`` per pixel.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"write_flo needs a (H, W, 2) flow; got shape {flow.shape}")
    height, width = flow.shape[:2]
    with open(path, "wb") as handle:
        np.array([FLO_TAG], dtype="<f4").tofile(handle)
        np.array([width, height], dtype="<i4").tofile(handle)
        np.ascontiguousarray(flow, dtype="<f4").tofile(handle)


def read_flo(path: str | Path) -> np.ndarray:
    """Read a ``.flo`` file.

    Raises :class:`DataError` naming the file when the tag is wrong, the size is implausible or the file
    is shorter (or longer) than its header says.

    Shape:
        returns: (H, W, 2) float32.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER_BYTES:
        raise DataError(f"{path}: truncated .flo file ({len(data)} bytes; the header alone is 12 bytes).")
    tag = float(np.frombuffer(data, dtype="<f4", count=1)[0])
    if tag != FLO_TAG:
        raise DataError(f"{path}: not a .flo file: tag {tag!r}, expected {FLO_TAG} (bytes 'PIEH').")
    width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise DataError(
            f"{path}: implausible .flo size width={width}, height={height}; expected 1..{_MAX_SIDE}."
        )
    expected = _HEADER_BYTES + width * height * 2 * 4
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: {len(data)} bytes, but a {width}x{height} .flo file has {expected}."
        )
    values = np.frombuffer(data, dtype="<f4", offset=_HEADER_BYTES, count=width * height * 2)
    return values.reshape(height, width, 2).astype(np.float32)


def colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel: 55 RGB colours around the hue circle.

    Segments (Baker et al. 2011): red->yellow 15, yellow->green 6, green->cyan 4, cyan->blue 11,
    blue->magenta 13, magenta->red 6; chosen so that perceptually equal steps get similar arc lengths.

    Shape:
        returns: (55, 3) float64 RGB in [0, 255].
    """
    segments = [  # (length, channel that changes, rising?, the other channels' fixed values)
        (15, 1, True, {0: 255, 2: 0}),  # red -> yellow: green rises
        (6, 0, False, {1: 255, 2: 0}),  # yellow -> green: red falls
        (4, 2, True, {0: 0, 1: 255}),  # green -> cyan: blue rises
        (11, 1, False, {0: 0, 2: 255}),  # cyan -> blue: green falls
        (13, 0, True, {1: 0, 2: 255}),  # blue -> magenta: red rises
        (6, 2, False, {0: 255, 1: 0}),  # magenta -> red: blue falls
    ]
    rows = []
    for length, channel, rising, fixed in segments:
        ramp = np.floor(255.0 * np.arange(length) / length)
        block = np.zeros((length, 3))
        block[:, channel] = ramp if rising else 255.0 - ramp
        for other, value in fixed.items():
            block[:, other] = value
        rows.append(block)
    return np.concatenate(rows)


def flow_to_colour(flow: np.ndarray, max_radius: float | None = None) -> np.ndarray:
    """Colour-code a flow field with the Middlebury wheel.

    Args:
        flow: the flow; non-finite vectors are drawn black.
        max_radius: speed (px) drawn fully saturated; default the field's largest finite speed.

    Shape:
        flow: (H, W, 2).
        returns: (H, W, 3) uint8 RGB.
    """
    flow = np.asarray(flow, dtype=np.float64)
    u, v = flow[..., 0], flow[..., 1]
    bad = ~(np.isfinite(u) & np.isfinite(v))
    u, v = np.where(bad, 0.0, u), np.where(bad, 0.0, v)
    radius = np.hypot(u, v)
    if max_radius is None:
        max_radius = float(radius.max()) if radius.size else 0.0
    scale = max_radius if max_radius > 0 else 1.0
    u, v, radius = u / scale, v / scale, radius / scale

    wheel = colour_wheel()
    count = wheel.shape[0]
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]; the wheel starts at red for motion to the right
    position = (angle + 1.0) / 2.0 * (count - 1)
    lower = np.floor(position).astype(np.int64)
    upper = (lower + 1) % count
    blend = (position - lower)[..., None]
    colour = ((1 - blend) * wheel[lower] + blend * wheel[upper]) / 255.0
    inside = (radius <= 1.0)[..., None]
    colour = np.where(inside, 1.0 - radius[..., None] * (1.0 - colour), colour * 0.75)
    colour = np.where(bad[..., None], 0.0, colour)
    return np.floor(255.0 * colour).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray, upscale: int = 1) -> None:
    """Write an RGB uint8 image as PNG, optionally enlarged by pixel repetition.

    Shape:
        rgb: (H, W, 3) uint8; the file is (H * upscale, W * upscale) pixels.
    """
    import cv2

    if upscale > 1:
        rgb = np.repeat(np.repeat(rgb, upscale, axis=0), upscale, axis=1)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise DataError(f"{path}: could not write the PNG (is the folder writable?).")


def write_flow_png(
    path: str | Path, flow: np.ndarray, max_radius: float | None = None, upscale: int = 1
) -> None:
    """Colour-code one flow field and write it as PNG.

    Shape:
        flow: (H, W, 2); the file is (H * upscale, W * upscale, 3).
    """
    write_png(path, flow_to_colour(flow, max_radius), upscale)
