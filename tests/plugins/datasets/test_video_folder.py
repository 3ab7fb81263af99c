"""dataset=video_folder: mp4, .npy and image folders in; sampling, resizing, colour; bad files named or skipped."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from mwga_plugins.datasets.clip_files import read_label_csv, scan_folder  # noqa: E402
from mwga_plugins.datasets.video_folder import (  # noqa: E402
    VideoFolderConfig,
    VideoFolderDataset,
    sample_indices,
)

from mwga_core.api.errors import ConfigValueError, DataError  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "make_videos.py"


def load_make_videos():
    spec = importlib.util.spec_from_file_location("make_videos", FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_videos = load_make_videos()


def dataset(**fields) -> VideoFolderDataset:
    return VideoFolderDataset(VideoFolderConfig(name="video_folder", **fields))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two mp4s, a uint8 (T, H, W) .npy, a float RGB .npy and a folder of PNG frames."""
    import cv2

    root = tmp_path / "clips"
    make_videos.write_video(root / "pans" / "a.mp4", make_videos.render("horizontal_pan", 1, 16, 32))
    make_videos.write_video(root / "pans" / "b.mp4", make_videos.render("horizontal_pan", 2, 16, 32), "mpeg4")
    rng = np.random.default_rng(0)
    np.save(root / "grey.npy", rng.integers(0, 256, (20, 40, 48), dtype=np.uint8))
    np.save(root / "rgb.npy", rng.random((8, 32, 32, 3)).astype(np.float32))
    (root / "seq").mkdir()
    for index in range(12):
        cv2.imwrite(str(root / "seq" / f"f{index}.png"), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not a clip")
    return root


def test_scan_finds_every_kind_sorted_by_relative_path(folder: Path) -> None:
    clips = scan_folder(folder)
    assert [c.id for c in clips] == ["grey.npy", "pans/a.mp4", "pans/b.mp4", "rgb.npy", "seq"]
    assert [c.kind for c in clips] == ["npy", "video", "video", "npy", "images"]


def test_every_clip_comes_out_with_the_configured_shape(folder: Path) -> None:
    frames, kept, skipped = dataset(num_frames=10, size=[16]).read_clips(scan_folder(folder))
    assert frames.shape == (5, 10, 16, 16, 1) and frames.dtype == np.float32
    assert len(kept) == 5 and skipped == []
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    rgb, _, _ = dataset(size=[12, 20], grayscale=False).read_clips(scan_folder(folder)[:1])
    assert rgb.shape == (1, 16, 12, 20, 3)


def test_decoded_video_matches_the_rendered_frames(folder: Path) -> None:
    rendered = make_videos.render("horizontal_pan", 1, 16, 32)
    clip = next(c for c in scan_folder(folder) if c.id == "pans/a.mp4")
    decoded = dataset(num_frames=16, size=[32]).read_clip(clip)[..., 0]
    assert np.abs(decoded - rendered).mean() < 0.03


def test_frames_are_sampled_uniformly_over_the_clip(tmp_path: Path) -> None:
    ramp = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None] * 5, (40, 16, 16)).copy()
    np.save(tmp_path / "ramp.npy", ramp)
    frames = dataset(num_frames=5, size=[16]).read_clip(scan_folder(tmp_path)[0])
    expected = sample_indices(40, 5) * 5 / 255.0
    np.testing.assert_allclose(frames[:, 0, 0, 0], expected, atol=1e-6)
    assert sample_indices(40, 5).tolist() == [0, 10, 20, 29, 39]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short clips repeat frames


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("corrupt.mp4", os.urandom(2000), "cannot be decoded"),
        ("empty.mp4", b"", "empty file"),
        ("bad.npy", b"not numpy at all", "no NumPy header"),
        ("single.npy", None, "1 frame"),
    ],
)
def test_a_bad_file_raises_naming_it_or_is_skipped(
    folder: Path, name: str, content: bytes | None, reason: str
) -> None:
    path = folder / name
    if content is None:
        np.save(path, np.zeros((1, 8, 8), dtype=np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as error:
        dataset().read_clips(scan_folder(folder))
    assert str(path) in str(error.value)
    frames, kept, skipped = dataset(on_error="skip").read_clips(scan_folder(folder))
    assert [s["file"] for s in skipped] == [str(path)]
    assert reason in skipped[0]["reason"]
    assert len(kept) == 5 and frames.shape[0] == 5


def test_a_corrupt_frame_of_an_image_folder_names_the_frame(folder: Path) -> None:
    (folder / "seq" / "f3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="f3.png"):
        dataset(num_frames=12).read_clips(scan_folder(folder))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_names_it(folder: Path) -> None:
    path = folder / "grey.npy"
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="grey.npy"):
            dataset().read_clips(scan_folder(folder))
    finally:
        path.chmod(0o644)


def test_load_reads_labels_and_lists_skipped_files(folder: Path, tmp_path: Path, ctx) -> None:
    (folder / "broken.mp4").write_bytes(os.urandom(500))
    queries = tmp_path / "queries"
    make_videos.write_video(queries / "q.mp4", make_videos.render("horizontal_pan", 3, 16, 32))
    corpus = dataset(train_dir=str(folder), query_dir=str(queries), labels="folders", on_error="skip").load(
        ctx
    )
    assert corpus.class_names == ["pans"]
    assert corpus.train.labels.tolist() == [-1, 0, 0, -1, -1]
    assert corpus.queries.labels.tolist() == [-1] and corpus.queries.ids == ["q.mp4"]
    assert [s["file"] for s in corpus.skipped] == [str(folder / "broken.mp4")]
    labels = tmp_path / "labels.csv"
    labels.write_text("clip,label\nrgb.npy,noise\nq.mp4,pans\n")
    corpus = dataset(train_dir=str(folder), query_dir=str(queries), labels=str(labels), on_error="skip").load(
        ctx
    )
    assert corpus.class_names == ["noise", "pans"]
    assert corpus.train.labels.tolist() == [-1, -1, -1, 0, -1] and corpus.queries.labels.tolist() == [1]


def test_bad_config_values_name_the_field() -> None:
    with pytest.raises(ConfigValueError, match="on_error"):
        dataset(on_error="ignore")
    with pytest.raises(ConfigValueError, match="size"):
        dataset(size=[4])
    with pytest.raises(ConfigValueError, match="num_frames"):
        dataset(num_frames=1)


def test_unlabelled_queries_are_ranked_but_not_evaluated(
    folder: Path, tmp_path: Path, compose_config, ctx
) -> None:
    from mwga_core.pipeline.run import run_attribution
    from mwga_core.reporting.run_outputs import results_document, write_rankings

    queries = tmp_path / "queries"
    make_videos.write_video(queries / "q.mp4", make_videos.render("horizontal_pan", 3, 16, 32))
    cfg = compose_config(
        "method=ours_simulated",
        "dataset=video_folder",
        f"dataset.train_dir={folder}",
        f"dataset.query_dir={queries}",
        "eval.precision_at=[1]",
        "eval.recall_at=[1]",
        "eval.ndcg_at=[1]",
        "feature_store=false",
    )
    result = run_attribution(cfg, ctx)
    assert result.rankings.shape == (1, 5)
    assert result.evaluation.per_pattern == {} and result.evaluation.per_query == [{}]
    document = results_document(result, cfg)
    assert document["per_query"] == [{"query_id": "q.mp4", "pattern": None}]
    write_rankings(result, tmp_path / "rankings.csv")
    assert len((tmp_path / "rankings.csv").read_text().splitlines()) == 6


def test_entries_that_can_never_be_read_are_found_with_their_problem(folder: Path) -> None:
    (folder / "dangling.mp4").symlink_to("nowhere.mp4")
    (folder / "loop.mp4").symlink_to("loop.mp4")
    raw = os.fsencode(folder) + b"/clip_\xff.npy"
    try:
        with open(raw, "wb") as handle:
            np.save(handle, np.zeros((4, 8, 8), dtype=np.uint8))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    bad = {c.id: c.problem for c in scan_folder(folder) if c.problem}
    assert set(bad) == {"dangling.mp4", "loop.mp4", "clip_\\xff.npy"}  # the id shows the byte as text
    assert "dangling link" in bad["dangling.mp4"] and "in a loop" in bad["loop.mp4"]
    assert "not valid UTF-8" in bad["clip_\\xff.npy"]
    with pytest.raises(DataError, match="clip_.xff.npy: the name is not valid UTF-8"):
        dataset().scan(folder)  # on_error=raise: refused when scanned
    frames, kept, skipped = dataset(on_error="skip").read_clips(dataset(on_error="skip").scan(folder))
    assert len(kept) == 5 and len(skipped) == 3
    assert all(s["file"].encode("utf-8") for s in skipped)  # writable as UTF-8 (JSON, CSV, terminal)


def test_the_labels_csv_must_be_utf8_text(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeffclip,label\npans/a.mp4,pans\n".encode())  # a spreadsheet's byte-order mark
    assert read_label_csv(labels) == {"pans/a.mp4": "pans"}
    labels.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match="not UTF-8 text.*clip,label"):
        read_label_csv(labels)
