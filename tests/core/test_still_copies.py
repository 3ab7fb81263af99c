"""Still copies: the middle frame repeated, or every frame warped onto it along the flow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mwga_core.diffusion.still_copies import (
    repeated_middle_frames,
    still_frames,
    warped_to_middle_frames,
)

SIZE, FRAMES, MIDDLE = 48, 9, 4


def texture(seed: int = 0, size: int = 128) -> np.ndarray:
    """(size, size) float32 smooth texture in [0, 1]."""
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


def panning_clip(speed: int) -> np.ndarray:
    """(1, FRAMES, SIZE, SIZE, 1): a window moving ``speed`` px per frame to the left over the texture,
    so the content moves right by ``speed`` px per frame."""
    image = texture()
    frames = [image[40 : 40 + SIZE, 40 - speed * t : 40 - speed * t + SIZE] for t in range(FRAMES)]
    return np.stack(frames)[None, :, :, :, None]


def test_repeat_is_the_middle_frame_everywhere() -> None:
    clip = panning_clip(1)
    still = still_frames(clip, "repeat")
    np.testing.assert_array_equal(still, np.repeat(clip[:, MIDDLE : MIDDLE + 1], FRAMES, axis=1))
    np.testing.assert_array_equal(repeated_middle_frames(clip), still)


def test_warp_takes_the_motion_out_of_a_pan() -> None:
    clip = panning_clip(1)
    warped = warped_to_middle_frames(clip)
    assert warped.shape == clip.shape and warped.dtype == np.float32
    np.testing.assert_array_equal(warped[:, MIDDLE], clip[:, MIDDLE])
    inner = np.s_[:, 8:-8, 8:-8]
    for t in range(FRAMES):
        if t == MIDDLE:
            continue
        moved = np.sqrt(np.mean((clip[:, t] - clip[:, MIDDLE])[inner] ** 2))
        left = np.sqrt(np.mean((warped[:, t] - clip[:, MIDDLE])[inner] ** 2))
        assert left < 0.15 * moved, (t, left, moved)


def test_warp_keeps_each_frames_noise() -> None:
    rng = np.random.default_rng(1)
    static = np.repeat(texture(2)[None, :SIZE, :SIZE], FRAMES, axis=0)[None, ..., None]
    noisy = (static + rng.normal(0.0, 0.05, size=static.shape)).astype(np.float32)
    repeat, warp = still_frames(noisy, "repeat"), still_frames(noisy, "warp")
    assert np.ptp(repeat, axis=1).max() == 0.0  # the repeated frame freezes the noise
    # the warp keeps it: frame-to-frame spread close to the noise's own (interpolation smooths a little)
    spread = float(np.median(warp.std(axis=1)))
    assert 0.6 * float(np.median(noisy.std(axis=1))) < spread


@pytest.mark.parametrize("speed", [3])
def test_points_a_frame_does_not_see_come_from_the_middle_frame(speed: int) -> None:
    clip = panning_clip(speed)
    warped = warped_to_middle_frames(clip)
    # frame 0 sees the middle frame's content speed * MIDDLE px further left: the middle frame's
    # leftmost columns are outside it, and are copied from the middle frame
    hidden = speed * MIDDLE - 2
    np.testing.assert_array_equal(warped[0, 0, :, :hidden], clip[0, MIDDLE, :, :hidden])
    assert not np.array_equal(warped[0, 0], clip[0, MIDDLE])  # the rest is read from frame 0


def test_warp_works_on_colour_clips() -> None:
    grey = panning_clip(1)
    colour = np.concatenate([grey, 0.5 * grey, 1.0 - grey], axis=4)
    warped = warped_to_middle_frames(colour)
    assert warped.shape == colour.shape
    np.testing.assert_array_equal(warped[:, MIDDLE], colour[:, MIDDLE])


def test_warp_gives_the_same_frames_whatever_opencvs_thread_count() -> None:
    rng = np.random.default_rng(3)
    clip = np.clip(panning_clip(2) + rng.normal(0.0, 0.05, size=(1, FRAMES, SIZE, SIZE, 1)), 0, 1)
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = warped_to_middle_frames(clip)
        cv2.setNumThreads(4)
        four = warped_to_middle_frames(clip)
    finally:
        cv2.setNumThreads(threads)
    np.testing.assert_array_equal(one, four)


def test_an_unknown_still_copy_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="freeze.*repeat, warp"):
        still_frames(panning_clip(1), "freeze")
