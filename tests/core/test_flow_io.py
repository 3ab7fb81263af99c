"""``.flo`` files and colour-wheel pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mwga_core.api.errors import DataError
from mwga_core.reporting.flow_io import (
    FLO_TAG,
    colour_wheel,
    flow_to_colour,
    read_flo,
    write_flo,
    write_flow_png,
)


def random_flow(height: int = 5, width: int = 7) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(height, width, 2)).astype(np.float32)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    flow = random_flow()
    write_flo(tmp_path / "a.flo", flow)
    back = read_flo(tmp_path / "a.flo")
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    np.testing.assert_array_equal(back, flow)


def test_layout_is_tag_width_height_then_interleaved_uv(tmp_path: Path) -> None:
    flow = np.zeros((2, 3, 2), dtype=np.float32)
    flow[0, 1] = (1.5, -2.0)  # row 0, column 1
    write_flo(tmp_path / "a.flo", flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert data[:4] == b"PIEH"
    assert np.frombuffer(data, "<f4", 1)[0] == FLO_TAG
    assert list(np.frombuffer(data, "<i4", 2, offset=4)) == [3, 2]  # width, then height
    assert list(np.frombuffer(data, "<f4", offset=12)[2:4]) == [1.5, -2.0]
    assert len(data) == 12 + 2 * 3 * 2 * 4


def test_bad_tag_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "not_flow.flo"
    path.write_bytes(np.array([1.0], "<f4").tobytes() + np.array([2, 2], "<i4").tobytes() + bytes(32))
    with pytest.raises(DataError, match=r"not_flow\.flo.*tag.*202021\.25"):
        read_flo(path)


def test_truncated_file_names_the_file_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "cut.flo"
    write_flo(path, random_flow())
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"cut\.flo: truncated.*7x5"):
        read_flo(path)
    path.write_bytes(b"PIE")
    with pytest.raises(DataError, match=r"cut\.flo: truncated"):
        read_flo(path)


def test_trailing_bytes_and_absurd_sizes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.flo"
    write_flo(path, random_flow())
    path.write_bytes(path.read_bytes() + bytes(8))
    with pytest.raises(DataError, match="trailing bytes"):
        read_flo(path)
    path.write_bytes(np.array([FLO_TAG], "<f4").tobytes() + np.array([-4, 2], "<i4").tobytes())
    with pytest.raises(DataError, match="implausible"):
        read_flo(path)


def test_write_refuses_a_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        write_flo(tmp_path / "a.flo", np.zeros((4, 4, 3), dtype=np.float32))


def test_colour_wheel_and_coding() -> None:
    wheel = colour_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # starts at red
    flow = np.array([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [np.nan, 0.0]]])
    colours = flow_to_colour(flow)
    assert colours.dtype == np.uint8 and colours.shape == (1, 4, 3)
    np.testing.assert_array_equal(colours[0, 0], [255, 255, 255])  # no motion: white
    np.testing.assert_array_equal(colours[0, 1], [255, 0, 0])  # rightward at full speed: red
    assert colours[0, 2, 0] < 10 and colours[0, 2, 2] > 200  # leftward: cyan-blue
    np.testing.assert_array_equal(colours[0, 3], [0, 0, 0])  # non-finite: black
    half = flow_to_colour(np.array([[[0.5, 0.0]]]), max_radius=1.0)
    np.testing.assert_array_equal(half[0, 0], [255, 127, 127])  # half speed: half saturated


def test_flow_png_has_the_right_shape(tmp_path: Path) -> None:
    import cv2

    write_flow_png(tmp_path / "f.png", random_flow(6, 9), upscale=3)
    image = cv2.imread(str(tmp_path / "f.png"))
    assert image.shape == (18, 27, 3)
    # OpenCV reads BGR: the file holds the same colours as flow_to_colour's RGB.
    expected = np.repeat(np.repeat(flow_to_colour(random_flow(6, 9)), 3, axis=0), 3, axis=1)
    np.testing.assert_array_equal(image[..., ::-1], expected)
