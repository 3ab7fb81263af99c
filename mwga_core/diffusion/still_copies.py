"""Still copies of clips: the same content with the motion taken out, for the ``static`` contrasts.

Three ways (``gradient.still``):

* ``repeat``: the middle frame repeated over the clip's length. Exact for a clean clip, but it also
  freezes whatever changes from frame to frame without being motion: sensor noise becomes a fixed
  pattern, which the model never saw, so G(x) - G(still) then measures "the noise moves" as much as
  "the content moves".
* ``warp``: every frame warped back onto the middle frame along the flow (Farnebäck, chained over
  consecutive frames, so each step is small). The content stands still where the middle frame sees it,
  and each frame keeps its own noise. Where a frame does not see a point of the middle frame (it left
  the view), the middle frame's pixel is used.
* ``warp_matched_noise``: ``warp``, plus what its bilinear reading takes away from the noise. A frame
  read between pixels averages up to four of them, so its noise variance shrinks (to 1/4 midway between
  four); fresh Gaussian noise of the clip's own level (:func:`noise_level`) is added where it shrank, so
  every warped frame has the noise of the clip's frames. The draw is seeded by the clip's bytes: a clip
  always gets the same copy. The level is read from time (each frame against the next one warped onto
  it), so a clean clip's fine detail, which moves with the content, is not taken for noise.
"""

from __future__ import annotations

import zlib

import numpy as np

#: the ways :func:`still_frames` makes a still copy
STILL_COPIES = ("repeat", "warp", "warp_matched_noise")

# OpenCV's common Farnebäck parameters (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags),
# the defaults of motion=farneback
_FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def repeated_middle_frames(frames: np.ndarray) -> np.ndarray:
    """Each clip's middle frame repeated over its length. Shape: (N, T, H, W, C) -> (N, T, H, W, C)."""
    middle = frames[:, frames.shape[1] // 2]
    return np.repeat(middle[:, None], frames.shape[1], axis=1)


def warped_to_middle_frames(frames: np.ndarray, matched_noise: bool = False) -> np.ndarray:
    """Each frame warped onto its clip's middle frame (see the module docstring).

    Shape: (N, T, H, W, C) float in [0, 1] -> (N, T, H, W, C) float32; frame T // 2 is the clip's own.
    """
    frames = np.asarray(frames, dtype=np.float32)
    out = np.empty_like(frames)
    for n, clip in enumerate(frames):
        out[n] = _warped_clip(clip, matched_noise)
    return out


def noise_level(clip: np.ndarray) -> float:
    """The clip's pixel-noise standard deviation, read from time rather than space: every frame is
    compared with the next one warped onto it along one Farnebäck step, so the content cancels and what
    is left is the two frames' noise (plus the warp's small error). Robust to the few points the flow
    gets wrong: the median absolute residual / 0.6745 (Donoho's scale), over the points the next frame
    sees. A bilinear read keeps a fraction ``k`` of the noise variance (:func:`_kept_noise_variance`),
    so the residual's variance is ``sigma^2 (1 + k)``, divided back out with the mean ``k``.

    A texture's fine detail moves with the content, so unlike a spatial (wavelet) estimate this one does
    not read it as noise: about 0.003 on the clean benchmark variants against 0.009 for the finest
    diagonal Haar coefficients, 0.050 for both on ``noisy`` (docs/evaluation.md).

    Shape: clip (T, H, W, C) float in [0, 1], T >= 2 -> a float; 0.0 for a single frame."""
    length, height, width = clip.shape[:3]
    if length < 2:
        return 0.0
    grey = _grey(clip)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    residuals, kept = [], []
    for t in range(length - 1):
        flow = _flow(grey[t], grey[t + 1])
        px, py = (xs, ys) if flow is None else (xs + flow[..., 0], ys + flow[..., 1])
        seen = ~_outside(px, py, width, height)
        following = _sample(clip[t + 1], px, py, clip[t])
        residuals.append((following - clip[t])[seen].ravel())
        kept.append(np.repeat(_kept_noise_variance(px, py, width, height)[seen], clip.shape[3]))
    residual = np.concatenate(residuals)
    if residual.size == 0:
        return 0.0
    spread = np.median(np.abs(residual - np.median(residual))) / 0.6745
    return float(spread / np.sqrt(1.0 + np.concatenate(kept).mean()))


def _grey(clip: np.ndarray) -> np.ndarray:
    """The clip as 8-bit grey frames for Farnebäck. Shape: (T, H, W, C) -> (T, H, W) uint8."""
    return np.clip(np.rint(clip.mean(axis=3) * 255.0), 0, 255).astype(np.uint8)


def _flow(first: np.ndarray, second: np.ndarray) -> np.ndarray | None:
    """Farnebäck flow from one grey frame to the next, (H, W) uint8 x 2 -> (H, W, 2) float32; None for
    identical frames (Farnebäck finds a little flow, ~0.05 px, between identical small frames: none is
    none)."""
    import cv2

    if np.array_equal(first, second):
        return None
    return cv2.calcOpticalFlowFarneback(first, second, None, *_FARNEBACK)


def _outside(px: np.ndarray, py: np.ndarray, width: int, height: int) -> np.ndarray:
    """Where the read positions (px, py) (H, W) fall outside a width x height frame, (H, W) bool."""
    return (px < 0) | (px > width - 1) | (py < 0) | (py > height - 1)


def _warped_clip(clip: np.ndarray, matched_noise: bool = False) -> np.ndarray:
    """One clip (T, H, W, C) warped onto its middle frame; with ``matched_noise`` the noise variance the
    bilinear reading averaged away is added back (fresh noise of the clip's :func:`noise_level`)."""
    import cv2

    length, height, width = clip.shape[:3]
    middle = length // 2
    grey = _grey(clip)
    out = np.empty_like(clip)
    out[middle] = clip[middle]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    sigma = noise_level(clip) if matched_noise else 0.0
    rng = np.random.default_rng(zlib.crc32(clip.tobytes())) if sigma > 0 else None
    for step in (1, -1):
        # where each pixel of the middle frame is in frame t: followed one frame at a time
        px, py = xs.copy(), ys.copy()
        t = middle
        while 0 <= t + step < length:
            flow = _flow(grey[t], grey[t + step])
            if flow is not None:
                moved = cv2.remap(flow, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                px, py = px + moved[..., 0], py + moved[..., 1]
            t += step
            out[t] = _sample(clip[t], px, py, clip[middle])
            if sigma > 0:
                kept = _kept_noise_variance(px, py, width, height)[..., None]
                out[t] += sigma * np.sqrt(1.0 - kept) * rng.standard_normal(out[t].shape, dtype=np.float32)
    return out


def _kept_noise_variance(px: np.ndarray, py: np.ndarray, width: int, height: int) -> np.ndarray:
    """The fraction of i.i.d. pixel-noise variance a bilinear read at (px, py) keeps: the sum of its four
    squared weights (1 at whole pixels, 1/4 midway between four). 1 where the fallback is read."""
    fx, fy = px - np.floor(px), py - np.floor(py)
    kept = ((1 - fx) ** 2 + fx**2) * ((1 - fy) ** 2 + fy**2)
    return np.where(_outside(px, py, width, height), 1.0, kept).astype(np.float32)


def _sample(frame: np.ndarray, px: np.ndarray, py: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, C) read at the positions (px, py) (H, W), bilinear; ``fallback`` outside it."""
    import cv2

    height, width = frame.shape[:2]
    sampled = cv2.remap(frame, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    sampled = sampled.reshape(frame.shape)
    outside = _outside(px, py, width, height)
    sampled[outside] = fallback[outside]
    return sampled


def still_frames(frames: np.ndarray, how: str = "repeat") -> np.ndarray:
    """The clips' still copies, made ``how`` (:data:`STILL_COPIES`). Shape: (N, T, H, W, C) -> same."""
    if how not in STILL_COPIES:
        raise ValueError(f"still copy {how!r}: expected one of {', '.join(STILL_COPIES)}")
    if how in ("warp", "warp_matched_noise"):
        return warped_to_middle_frames(frames, matched_noise=how == "warp_matched_noise")
    return repeated_middle_frames(frames)
