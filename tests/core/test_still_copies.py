"""Still copies: the middle frame repeated, or every frame warped onto it along the flow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mwga_core.diffusion.still_copies import (
    noise_level,
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


def wavelet_noise_level(frames: np.ndarray) -> float:
    """Donoho's spatial estimate, for measuring the noise of single frames here: the median absolute
    finest diagonal Haar coefficient / 0.6745. Shape: (..., H, W, C) with even H, W -> a float."""
    f = frames
    diagonal = (
        f[..., 0::2, 0::2, :] - f[..., 1::2, 0::2, :] - f[..., 0::2, 1::2, :] + f[..., 1::2, 1::2, :]
    ) / 2
    return float(np.median(np.abs(diagonal)) / 0.6745)


def test_noise_level_reads_pixel_noise_and_not_a_smooth_texture() -> None:
    rng = np.random.default_rng(4)
    clean = np.repeat(texture(5)[None, :SIZE, :SIZE], FRAMES, axis=0)[..., None]
    assert noise_level(clean) < 0.01
    for sigma in (0.02, 0.05):
        noisy = clean + rng.normal(0.0, sigma, size=clean.shape).astype(np.float32)
        assert abs(noise_level(noisy) - sigma) < 0.15 * sigma
    assert noise_level(clean[:1]) == 0.0  # one frame: nothing to compare it with


def test_noise_level_does_not_take_a_moving_textures_fine_detail_for_noise() -> None:
    # a fine texture (blur 0.8 px) panning 1 px per frame: its detail moves with it, noise does not
    noise = np.random.default_rng(8).random((128, 128)).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), 0.8)
    fine = (fine - fine.min()) / (fine.max() - fine.min())
    clip = np.stack([fine[40 : 40 + SIZE, 40 - t : 40 - t + SIZE] for t in range(FRAMES)])[..., None]
    assert noise_level(clip) < 0.5 * wavelet_noise_level(clip)  # the spatial estimate reads the detail
    noisy = clip + np.random.default_rng(9).normal(0.0, 0.05, size=clip.shape).astype(np.float32)
    assert abs(noise_level(noisy) - 0.05) < 0.1 * 0.05


def test_matched_noise_gives_the_warped_frames_back_their_noise() -> None:
    rng = np.random.default_rng(6)
    # a pan of half a pixel per frame: every other frame is read midway between pixels, where bilinear
    # reading keeps 1/2 of the noise variance (1/4 midway between four pixels)
    image = cv2.resize(texture(7), None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    clip = np.stack([image[80 : 80 + SIZE, 80 - t : 80 - t + 2 * SIZE : 2] for t in range(FRAMES)])
    clean = clip[None, ..., None].astype(np.float32)
    clip = clean + rng.normal(0.0, 0.05, size=clean.shape).astype(np.float32)
    plain, matched = still_frames(clip, "warp"), still_frames(clip, "warp_matched_noise")
    np.testing.assert_array_equal(matched[:, MIDDLE], clip[:, MIDDLE])
    # a still copy's noise: what differs from the clean middle frame it stands for (the warp's own error
    # on this smooth texture is far below the noise)
    inner = np.s_[0, :, 8:-8, 8:-8]
    before = np.delete(plain[inner] - clean[0, MIDDLE, 8:-8, 8:-8], MIDDLE, axis=0)
    after = np.delete(matched[inner] - clean[0, MIDDLE, 8:-8, 8:-8], MIDDLE, axis=0)
    assert before.std() < 0.85 * 0.05  # the bilinear reading smooths the noise away
    assert abs(after.std() - 0.05) < 0.1 * 0.05  # the matched copy has it back
    np.testing.assert_array_equal(matched, still_frames(clip, "warp_matched_noise"))  # same clip, same noise


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
