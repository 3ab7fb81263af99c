"""The paper's synthetic benchmark: six planted motion patterns on random textures.

Every clip is a random smooth texture seen through a moving 2-D affine camera. The six patterns and the
affine step S applied between consecutive frames (coordinates about the frame centre, y pointing down):

* ``horizontal_pan``: translate by (v, 0)
* ``vertical_tilt``: translate by (0, v)
* ``diagonal_slide``: translate by (v, v) / sqrt(2)
* ``rotation_cw``: rotate by +theta (clockwise on screen, because y points down)
* ``zoom_in``: scale by s > 1
* ``random``: an independent translation of speed v in a uniformly random direction at every step

Speeds (v, theta, s) and textures are drawn per clip. Because frame t+1 is frame t warped by S, the exact
flow of every frame pair is ``S x - x`` and is kept as ground truth. Clip i of a split is generated from a
seed derived from (run seed, split, i) alone, so a 500-clip corpus starts with the 200-clip corpus.

**Variants** (the paper's setting is the default of every field): ``direction=both`` moves pans, tilts and
slides either way (sign drawn per clip), ``rotation_direction=both`` and ``zoom_direction=both`` likewise
turn and zoom either way; ``texture`` picks smooth blurred noise (the paper's), ``natural`` (1/f^a noise,
the power spectrum of natural images) or ``objects`` (a textured disc moving over a *static* textured
background, turning and zooming about its own centre: object motion instead of camera motion, flow zero
on the background); ``random_motion`` is
``jitter`` (a new direction every step, the paper's) or ``walk`` (the direction turns gradually);
``channels`` 1 (grey) or 3 (RGB); ``pixel_noise`` adds grey-level noise. Whatever the variant, the flow
kept as ground truth is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.clips import ClipSet, Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.datasets import Dataset, DatasetConfig
from mwga_core.api.errors import ConfigValueError
from mwga_core.config.checks import at_least, one_of, satisfies

PATTERNS = (
    "horizontal_pan",
    "vertical_tilt",
    "diagonal_slide",
    "rotation_cw",
    "zoom_in",
    "random",
)


def _ordered_range() -> dict:
    """Field metadata: ``[min, max]`` of finite numbers with 0 < min <= max."""
    return satisfies(
        lambda v: len(v) == 2 and all(math.isfinite(x) for x in v) and 0.0 < v[0] <= v[1],
        "[min, max] of finite numbers with 0 < min <= max",
    )


@dataclass
class SyntheticConfig(DatasetConfig):
    """The benchmark's knobs; defaults follow the paper (N=200, T=16, 32x32 grey)."""

    num_clips: int = 200
    num_frames: int = field(default=16, metadata=at_least(2))
    size: int = field(default=32, metadata=at_least(8, note="pixels"))
    queries_per_pattern: int = field(default=1, metadata=at_least(1))
    patterns: list[str] = field(default_factory=lambda: list(PATTERNS))
    #: translation speed in px/frame (pan, tilt, diagonal, random); drawn uniformly per clip
    speed: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata=_ordered_range())
    #: rotation speed in degrees/frame
    rotation_deg: list[float] = field(default_factory=lambda: [1.5, 4.0], metadata=_ordered_range())
    #: zoom rate per frame: scale = 1 + rate
    zoom_rate: list[float] = field(default_factory=lambda: [0.02, 0.05], metadata=_ordered_range())
    #: standard deviation of the texture blur in px, drawn per clip (larger = smoother texture)
    texture_blur: list[float] = field(default_factory=lambda: [0.8, 2.0], metadata=_ordered_range())
    #: grey-level noise added to every frame (0 = none)
    pixel_noise: float = field(default=0.0, metadata=at_least(0))
    #: pans, tilts and slides: fixed (right, down, down-right, the paper's) or both (either way per clip)
    direction: str = field(default="fixed", metadata=one_of("fixed", "both"))
    #: rotation: fixed (clockwise) or both (either way per clip)
    rotation_direction: str = field(default="fixed", metadata=one_of("fixed", "both"))
    #: zoom: fixed (in) or both (in or out per clip)
    zoom_direction: str = field(default="fixed", metadata=one_of("fixed", "both"))
    #: smooth (blurred noise, the paper's), natural (1/f^a noise) or objects (moving discs, static background)
    texture: str = field(default="smooth", metadata=one_of("smooth", "natural", "objects"))
    #: the random pattern: jitter (a new direction every step) or walk (the direction turns gradually)
    random_motion: str = field(default="jitter", metadata=one_of("jitter", "walk"))
    #: 1 (grey) or 3 (RGB)
    channels: int = field(default=1, metadata=one_of(1, 3))


class SyntheticMotionBenchmark(Dataset):
    """Seeded, balanced clips of six motion patterns with exact ground-truth flow."""

    def __init__(self, config: SyntheticConfig) -> None:
        super().__init__(config)
        c = config
        unknown = [p for p in c.patterns if p not in PATTERNS]
        if unknown or not c.patterns or len(set(c.patterns)) != len(c.patterns):
            raise ConfigValueError("patterns", list(c.patterns), f"distinct names from {list(PATTERNS)}")
        if c.num_clips < len(c.patterns):
            raise ConfigValueError(
                "num_clips", c.num_clips, f"an integer >= {len(c.patterns)} (at least one clip per pattern)"
            )

    def cache_fingerprint(self) -> object:
        """Nothing beyond config and seed: the clips are rendered from them alone."""
        return {}

    def load(self, ctx: RunContext) -> Corpus:
        c = self.config
        train_labels = np.arange(c.num_clips) % len(c.patterns)
        train_ids = [f"train-{i:05d}" for i in range(c.num_clips)]
        train = self._render(ctx, "train", train_ids, train_labels)
        query_labels = np.repeat(np.arange(len(c.patterns)), c.queries_per_pattern)
        query_ids = [
            f"query-{c.patterns[p]}-{j}" for p in range(len(c.patterns)) for j in range(c.queries_per_pattern)
        ]
        queries = self._render(ctx, "query", query_ids, query_labels)
        return Corpus(train=train, queries=queries, class_names=list(c.patterns))

    def _render(self, ctx: RunContext, split: str, ids: list[str], labels: np.ndarray) -> ClipSet:
        c = self.config
        n, t, s = len(ids), c.num_frames, c.size
        frames = np.empty((n, t, s, s, c.channels), dtype=np.float32)
        flows = np.empty((n, t - 1, s, s, 2), dtype=np.float32)
        for i, clip_id in enumerate(ids):
            rng = ctx.rng("synthetic", split, clip_id)
            clip, flows[i] = render_clip(c.patterns[labels[i]], rng, c)
            frames[i] = clip.reshape(t, s, s, c.channels)
        return ClipSet(frames=frames, labels=labels.astype(np.int64), ids=list(ids), gt_flow=flows)


#: standard deviation (px) of the blur that band-limits ``texture=natural`` like a camera's optics
OPTICS_BLUR = 0.8
#: standard deviation (radians) of the turn per step of ``random_motion=walk``
WALK_TURN = 0.35


def _sign(rng: np.random.Generator, direction: str) -> float:
    """+1 for a fixed direction; +1 or -1 with equal odds for ``both`` (one extra draw only then)."""
    return 1.0 if direction == "fixed" else float(rng.choice([-1.0, 1.0]))


def _step_transforms(pattern: str, rng: np.random.Generator, c: SyntheticConfig) -> list[np.ndarray]:
    """The 3x3 affine step from frame t to t+1, for each t, in centred pixel coordinates."""
    steps = c.num_frames - 1

    def translation(dx: float, dy: float) -> np.ndarray:
        return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])

    # Draws beyond the paper's (a sign, a walk) come after its own, so the default clips never change.
    v = rng.uniform(*c.speed)
    if pattern in ("horizontal_pan", "vertical_tilt", "diagonal_slide"):
        v *= _sign(rng, c.direction)
        dx, dy = {"horizontal_pan": (v, 0.0), "vertical_tilt": (0.0, v)}.get(pattern, (v / math.sqrt(2),) * 2)
        return [translation(dx, dy)] * steps
    if pattern == "rotation_cw":
        theta = math.radians(rng.uniform(*c.rotation_deg)) * _sign(rng, c.rotation_direction)
        cos, sin = math.cos(theta), math.sin(theta)
        return [np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])] * steps
    if pattern == "zoom_in":
        rate = rng.uniform(*c.zoom_rate)
        scale = 1.0 + rate if _sign(rng, c.zoom_direction) > 0 else 1.0 / (1.0 + rate)
        return [np.diag([scale, scale, 1.0])] * steps
    if pattern == "random":
        angles = rng.uniform(0.0, 2 * math.pi, size=steps)
        speeds = rng.uniform(*c.speed, size=steps)
        if c.random_motion == "walk":  # start anywhere, then turn by a little every step
            angles = angles[0] + np.concatenate(
                [[0.0], np.cumsum(rng.normal(0.0, WALK_TURN, size=steps - 1))]
            )
        return [translation(sp * math.cos(a), sp * math.sin(a)) for a, sp in zip(angles, speeds, strict=True)]
    raise ValueError(f"unknown pattern {pattern!r}")


def _smooth_texture(rng: np.random.Generator, size: int, c: SyntheticConfig) -> np.ndarray:
    """(size, size) float32 in [0, 1]: blurred noise at two scales, random contrast (the paper's texture)."""
    import cv2

    blur = rng.uniform(*c.texture_blur)
    fine = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), blur)
    coarse = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 4 * blur)
    texture = fine / (fine.std() + 1e-8) + rng.uniform(0.3, 1.0) * coarse / (coarse.std() + 1e-8)
    texture = (texture - texture.min()) / (texture.max() - texture.min() + 1e-8)
    contrast = rng.uniform(0.6, 1.0)
    return (0.5 + contrast * (texture - 0.5)).astype(np.float32)


def _natural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: noise whose power spectrum falls as 1/f^a, a in [1.6, 2.4] (natural
    images have a close to 2), random contrast."""
    import cv2

    exponent = rng.uniform(1.6, 2.4)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    frequency = np.hypot(fx, fy)
    frequency[0, 0] = 1.0
    spectrum = (
        rng.standard_normal(frequency.shape) + 1j * rng.standard_normal(frequency.shape)
    ) / frequency ** (exponent / 2)
    spectrum[0, 0] = 0.0
    texture = np.fft.irfft2(spectrum, s=(size, size)).astype(np.float32)
    # band-limited as a camera's optics would be: no detail finer than a pixel, so resampling stays faithful
    texture = cv2.GaussianBlur(texture, (0, 0), OPTICS_BLUR)
    texture = (texture - texture.min()) / (texture.max() - texture.min() + 1e-8)
    contrast = rng.uniform(0.6, 1.0)
    return (0.5 + contrast * (texture - 0.5)).astype(np.float32)


def _grey_texture(rng: np.random.Generator, size: int, c: SyntheticConfig) -> np.ndarray:
    return _natural_texture(rng, size) if c.texture == "natural" else _smooth_texture(rng, size, c)


def _texture(rng: np.random.Generator, size: int, c: SyntheticConfig) -> np.ndarray:
    """A random texture in [0, 1]: (size, size) for grey, (size, size, 3) for RGB (a tinted luminance
    texture plus a chroma texture, so the channels are correlated as in real footage)."""
    luminance = _grey_texture(rng, size, c)
    if c.channels == 1:
        return luminance
    chroma = _grey_texture(rng, size, c)
    tint, shift = rng.uniform(0.4, 1.0, size=3), rng.uniform(-0.3, 0.3, size=3)
    rgb = luminance[..., None] * tint + (chroma[..., None] - 0.5) * shift
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _about(step: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The affine ``step`` with ``centre`` (centred frame coordinates) as its fixed point instead of 0."""
    to_centre = np.array([[1.0, 0.0, centre[0]], [0.0, 1.0, centre[1]], [0.0, 0.0, 1.0]])
    return to_centre @ step @ np.linalg.inv(to_centre)


def _object_mask(
    rng: np.random.Generator,
    canvas_size: int,
    steps: list[np.ndarray],
    centre: np.ndarray,
    c: SyntheticConfig,
) -> np.ndarray:
    """(canvas, canvas) float32 {0, 1}: one disc in texture space, placed so that it is centred on ``centre``
    (centred frame coordinates) at the middle frame, so it stays in view while it moves."""
    s, middle = c.size, (c.num_frames - 1) // 2
    at_middle = np.eye(3)
    for step in steps[:middle]:
        at_middle = step @ at_middle
    to_texture = np.linalg.inv(at_middle)
    scale = math.sqrt(abs(np.linalg.det(to_texture[:2, :2])))
    canvas_centre = (canvas_size - 1) / 2.0
    ys, xs = np.mgrid[0:canvas_size, 0:canvas_size].astype(np.float64) - canvas_centre
    in_texture = to_texture @ np.array([centre[0], centre[1], 1.0])
    radius = rng.uniform(0.2, 0.3) * s * scale
    return (np.hypot(xs - in_texture[0], ys - in_texture[1]) <= radius).astype(np.float32)


def render_clip(pattern: str, rng: np.random.Generator, c: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip and its exact flow.

    Returns:
        frames: (T, H, W) float32 in [0, 1] for grey, (T, H, W, 3) for RGB.
        flow: (T-1, H, W, 2) float32, ``S x - x`` for the step S of each frame pair (with
        ``texture=objects``: on the pixels of the moving object, 0 on the static background).
    """
    import cv2

    s, t = c.size, c.num_frames
    steps = _step_transforms(pattern, rng, c)
    # The canvas must contain every frame's view: the largest drift, the rotated corners, plus a margin.
    drift = (t - 1) * max(c.speed[1], 1.0)
    canvas_size = int(math.ceil(s * math.sqrt(2) + 2 * drift + 8))
    texture = _texture(rng, canvas_size, c)
    objects = c.texture == "objects"
    if objects:  # the object wears the texture drawn above; the background is another, static one
        # it turns and zooms about its own centre, not the frame's (where it would hardly move)
        centre = rng.uniform(-s / 6, s / 6, size=2)
        steps = [_about(step, centre) for step in steps]
        object_mask = _object_mask(rng, canvas_size, steps, centre, c)
        background = _texture(rng, s, c)
        on_object = np.empty((t, s, s), dtype=bool)
    canvas_centre = (canvas_size - 1) / 2.0
    frame_centre = (s - 1) / 2.0
    # frame pixel p -> centred x = p - frame_centre -> texture point A_t^-1 x -> canvas pixel + canvas_centre
    to_centred = np.array([[1.0, 0.0, -frame_centre], [0.0, 1.0, -frame_centre], [0.0, 0.0, 1.0]])
    from_centred = np.array([[1.0, 0.0, canvas_centre], [0.0, 1.0, canvas_centre], [0.0, 0.0, 1.0]])
    cumulative = np.eye(3)
    frames = np.empty((t, s, s) + texture.shape[2:], dtype=np.float32)

    def view(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(
            image, matrix[:2].astype(np.float64), (s, s), flags=flags, borderMode=cv2.BORDER_REFLECT
        )

    for index in range(t):
        if index > 0:
            cumulative = steps[index - 1] @ cumulative
        frame_to_canvas = from_centred @ np.linalg.inv(cumulative) @ to_centred
        frames[index] = view(texture, frame_to_canvas)
        if objects:
            alpha = view(object_mask, frame_to_canvas)
            on_object[index] = alpha > 0.5
            alpha = alpha.reshape(alpha.shape + (1,) * (texture.ndim - 2))
            frames[index] = alpha * frames[index] + (1.0 - alpha) * background
    if c.pixel_noise > 0:
        frames += rng.normal(0.0, c.pixel_noise, size=frames.shape).astype(np.float32)
    np.clip(frames, 0.0, 1.0, out=frames)

    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64) - frame_centre
    flow = np.empty((t - 1, s, s, 2), dtype=np.float32)
    for index, step in enumerate(steps):
        flow[index, ..., 0] = step[0, 0] * xs + step[0, 1] * ys + step[0, 2] - xs
        flow[index, ..., 1] = step[1, 0] * xs + step[1, 1] * ys + step[1, 2] - ys
        if objects:
            flow[index][~on_object[index]] = 0.0
    return frames, flow


@hookimpl
def mwga_register_datasets(register):
    register(
        "synthetic",
        SyntheticMotionBenchmark,
        SyntheticConfig,
        description="the paper's benchmark: six planted motion patterns, exact ground-truth flow",
    )
