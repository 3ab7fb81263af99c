"""Inputs for contract tests and plugin authors' own tests: tiny moving clips with their exact flow.

The kit renders its clips itself (no built-in plugin is needed, so blocking or replacing one never
breaks a third party's tests): a smooth random texture seen through a camera that moves by one affine
step per frame. Because frame t+1 is frame t warped by the step S, the exact flow of every frame pair is
``S x - x``. The six patterns are those of the built-in benchmark, so class names read the same.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mwga_core.api.clips import AnalysedClips, ClipSet, Corpus
from mwga_core.api.context import RunContext

#: the motion patterns of :func:`small_corpus`, one class each
PATTERNS = ("horizontal_pan", "vertical_tilt", "diagonal_slide", "rotation_cw", "zoom_in", "random")


def make_context(tmp_path: Path | str | None = None, seed: int = 0) -> RunContext:
    """A quiet CPU :class:`RunContext` whose cache and output folders live under ``tmp_path``."""
    base = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="mwga-contract-"))
    cache_dir, output_dir = base / "cache", base / "output"
    cache_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(
        seed=seed,
        device="cpu",
        cache_dir=cache_dir,
        output_dir=output_dir,
        show_progress=False,
        console=Console(stderr=True, quiet=True),
    )


def _step(pattern: str, rng: np.random.Generator, steps: int) -> list[np.ndarray]:
    """The 3x3 affine step from frame t to t+1 (centred pixel coordinates, y down), for each t."""

    def shift(dx: float, dy: float) -> np.ndarray:
        return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])

    speed = rng.uniform(0.5, 2.0)
    if pattern == "horizontal_pan":
        return [shift(speed, 0.0)] * steps
    if pattern == "vertical_tilt":
        return [shift(0.0, speed)] * steps
    if pattern == "diagonal_slide":
        return [shift(speed / math.sqrt(2), speed / math.sqrt(2))] * steps
    if pattern == "rotation_cw":
        theta = math.radians(rng.uniform(1.5, 4.0))
        return [
            np.array(
                [[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]]
            )
        ] * steps
    if pattern == "zoom_in":
        return [np.diag([1.0 + rng.uniform(0.02, 0.05)] * 2 + [1.0])] * steps
    angles = rng.uniform(0.0, 2 * math.pi, size=steps)
    return [shift(rng.uniform(0.5, 2.0) * math.cos(a), rng.uniform(0.5, 2.0) * math.sin(a)) for a in angles]


def render_moving_clip(
    pattern: str, rng: np.random.Generator, num_frames: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One clip of ``pattern`` (a name from :data:`PATTERNS`) and its exact flow.

    Shape:
        returns frames (T, S, S) float32 in [0, 1] and flow (T-1, S, S, 2) float32 (dx, dy).
    """
    import cv2

    steps = _step(pattern, rng, num_frames - 1)
    canvas = int(math.ceil(size * math.sqrt(2) + 2 * (num_frames - 1) * 2.0 + 8))
    blur = rng.uniform(0.8, 2.0)
    noise = rng.standard_normal((canvas, canvas)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), blur)
    texture = (texture - texture.min()) / (texture.max() - texture.min() + 1e-8)
    centre, middle = (size - 1) / 2.0, (canvas - 1) / 2.0
    to_centred = np.array([[1.0, 0.0, -centre], [0.0, 1.0, -centre], [0.0, 0.0, 1.0]])
    to_canvas = np.array([[1.0, 0.0, middle], [0.0, 1.0, middle], [0.0, 0.0, 1.0]])
    camera = np.eye(3)
    frames = np.empty((num_frames, size, size), dtype=np.float32)
    for index in range(num_frames):
        if index:
            camera = steps[index - 1] @ camera
        warp = (to_canvas @ np.linalg.inv(camera) @ to_centred)[:2]
        frames[index] = cv2.warpAffine(
            texture,
            warp,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) - centre
    flow = np.empty((num_frames - 1, size, size, 2), dtype=np.float32)
    for index, step in enumerate(steps):
        flow[index, ..., 0] = step[0, 0] * xs + step[0, 1] * ys + step[0, 2] - xs
        flow[index, ..., 1] = step[1, 0] * xs + step[1, 1] * ys + step[1, 2] - ys
    return np.clip(frames, 0.0, 1.0), flow


def _clip_set(split: str, count: int, num_frames: int, size: int, seed: int) -> ClipSet:
    labels = np.arange(count, dtype=np.int64) % len(PATTERNS)
    frames = np.empty((count, num_frames, size, size, 1), dtype=np.float32)
    flows = np.empty((count, num_frames - 1, size, size, 2), dtype=np.float32)
    for index, label in enumerate(labels):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        frames[index, ..., 0], flows[index] = render_moving_clip(PATTERNS[label], rng, num_frames, size)
    ids = [f"{split}-{index:05d}" for index in range(count)]
    return ClipSet(frames=frames, labels=labels, ids=ids, gt_flow=flows)


@functools.lru_cache(maxsize=8)
def _cached_corpus(num_clips: int, num_frames: int, size: int, seed: int) -> Corpus:
    return Corpus(
        train=_clip_set("train", num_clips, num_frames, size, seed),
        queries=_clip_set("query", len(PATTERNS), num_frames, size, seed),
        class_names=list(PATTERNS),
    )


def small_corpus(num_clips: int = 12, num_frames: int = 5, size: int = 16, seed: int = 0) -> Corpus:
    """Tiny moving clips of the six :data:`PATTERNS` (clip i has pattern i mod 6), with exact flow.

    Shape:
        train.frames: (num_clips, num_frames, size, size, 1) float32 in [0, 1].
        train.gt_flow: (num_clips, num_frames - 1, size, size, 2) float32.
        queries: one clip per pattern (6), same shapes.
    """
    return copy.deepcopy(_cached_corpus(num_clips, num_frames, size, seed))


def static_clips(frames: np.ndarray) -> np.ndarray:
    """Clips that do not move: every frame is the clip's first frame. Same shape as ``frames``."""
    return np.repeat(frames[:, :1], frames.shape[1], axis=1).copy()


def flow_direction_histograms(flows: np.ndarray, bins: int) -> np.ndarray:
    """Magnitude-weighted histograms of flow directions over [0, 2pi), averaged over frame pairs and
    L1-normalised (all-zero for a clip that does not move): a small motion descriptor.

    Shape:
        flows: (N, T-1, H, W, 2); returns (N, bins) float32.
    """
    n = flows.shape[0]
    angle = np.mod(np.arctan2(flows[..., 1], flows[..., 0]), 2 * np.pi).reshape(n, -1)
    magnitude = np.hypot(flows[..., 0], flows[..., 1]).reshape(n, -1)
    which = np.minimum((angle / (2 * np.pi) * bins).astype(np.int64), bins - 1)
    histograms = np.stack([np.bincount(w, m, minlength=bins) for w, m in zip(which, magnitude, strict=True)])
    totals = histograms.sum(axis=1, keepdims=True)
    return np.divide(histograms, totals, out=np.zeros_like(histograms), where=totals > 0).astype(np.float32)


def small_analysed(split: str = "train", bins: int = 8, **corpus_args: Any) -> AnalysedClips:
    """One split of :func:`small_corpus` with its exact flow and :func:`flow_direction_histograms`."""
    corpus = small_corpus(**corpus_args)
    clips: ClipSet = corpus.train if split == "train" else corpus.queries
    flows = clips.gt_flow
    static = np.hypot(flows[..., 0], flows[..., 1]).reshape(len(clips), -1).mean(axis=1) < 0.01
    return AnalysedClips(clips, flows, flow_direction_histograms(flows, bins), static)


def random_features(checkpoints: int, count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Standard-normal features. Shape: (checkpoints, count, dim) float32."""
    return np.random.default_rng(seed).standard_normal((checkpoints, count, dim)).astype(np.float32)
