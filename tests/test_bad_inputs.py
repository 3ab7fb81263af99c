"""Bad clip files and names, from the outside: real files in a temp folder, `mwga` in a subprocess.

Each case must end in one line ``error: <file>: <reason>`` and exit code 2 (or, with
``dataset.on_error=skip``, be left out and listed with its reason), never a traceback, and must leave no
output half-written: no index manifest after a failed `mwga index`, and `mwga attribute` writes all of its
files or none (an earlier run's outputs in the same folder stay as they were).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SMALL = ["method=ours_simulated", "dataset.num_frames=8", "dataset.size=[24]"]
needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed")


def mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mwga *args`` in a subprocess, with its own cache; the timeout only stops a hung process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    command = [sys.executable, "-m", "mwga_core.cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, exactly one ``error:`` line on stderr, holding every word; returns it."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def write_corpus(folder: Path, count: int = 12) -> None:
    """``count`` benchmark clips as uint8 .npy files, one folder per pattern (as conftest's write_clips)."""
    from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, render_clip

    for index in range(count):
        pattern = PATTERNS[index % len(PATTERNS)]
        frames, _ = render_clip(pattern, np.random.default_rng(index), SyntheticConfig(num_frames=8, size=24))
        (folder / pattern).mkdir(parents=True, exist_ok=True)
        np.save(folder / pattern / f"clip_{index:03d}.npy", np.rint(frames * 255).astype(np.uint8))


def non_utf8_name(folder: Path, stem: bytes = b"clip_\xff") -> Path:
    """A copy of a good clip under a name that is not valid UTF-8 (skips where the file system refuses)."""
    data = next(folder.rglob("*.npy")).read_bytes()
    raw = os.fsencode(folder) + b"/" + stem + b".npy"
    try:
        with open(raw, "wb") as handle:
            handle.write(data)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return Path(os.fsdecode(raw))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(work folder, index) of a good 12-clip corpus, shared by the query tests."""
    work = tmp_path_factory.mktemp("bad-inputs")
    write_corpus(work / "corpus")
    assert_ok(mwga("index", "corpus", "--out", "index", *SMALL, cwd=work))
    return work, work / "index"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


def previous_outputs(out: Path) -> dict[str, bytes]:
    """Outputs of an earlier run in ``out``: a failed run must leave them exactly as they are."""
    out.mkdir()
    files = {"attribution.json": b'{"earlier": true}\n', "attribution.csv": b"query,rank\nold,1\n"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


# -- file names that are not UTF-8 -----------------------------------------------------------------------


def test_a_clip_name_that_is_not_utf8_is_a_one_line_error(corpus: Path, tmp_path: Path) -> None:
    non_utf8_name(corpus)
    done = mwga("index", "corpus", "--out", "index", *SMALL, cwd=tmp_path)
    assert_one_line_error(done, "clip_\\xff.npy", "not valid UTF-8", "rename")
    assert not (tmp_path / "index").exists()  # refused when scanned, before any work


def test_a_clip_name_that_is_not_utf8_is_skipped_and_attribution_is_whole(
    corpus: Path, tmp_path: Path
) -> None:
    non_utf8_name(corpus)
    done = mwga("index", "corpus", "--out", "index", *SMALL, "dataset.on_error=skip", cwd=tmp_path)
    assert_ok(done)
    assert "12 clips" in done.stdout and "1 skipped" in done.stdout
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text(encoding="utf-8"))
    [skipped] = manifest["skipped"]
    assert skipped["file"].endswith("clip_\\xff.npy") and "not valid UTF-8" in skipped["reason"]

    queries = [str(p) for p in sorted(corpus.rglob("clip_00[01].npy"))]
    done = mwga(
        "attribute", "index", *queries, "--top-k", "5", "--out", "out", "--sheet-rows", "2", cwd=tmp_path
    )
    assert_ok(done)
    out = tmp_path / "out"
    document = json.loads((out / "attribution.json").read_bytes().decode("utf-8"))
    ids = {top["clip_id"] for query in document["queries"] for top in query["top"]}
    assert all(i.isprintable() and i.encode("utf-8") for i in ids)
    with open(out / "attribution.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 5  # whole: every row of both queries
    assert len(list(out.glob("contact_*.png"))) == 2


def test_an_index_holding_a_non_utf8_id_writes_no_output(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    # An index made before such names were refused holds the id as a lone surrogate; the attribution
    # used to crash half-way through attribution.csv. Now nothing is written.
    work, index = indexed
    old = tmp_path / "old-index"
    shutil.copytree(index, old)
    manifest = json.loads((old / "manifest.json").read_text())
    clips_json = old / manifest["data"] / "clips.json"
    clips = json.loads(clips_json.read_text())
    clips = [dict(clip, id=clip["id"].replace("clip_", "clip_\udcff")) for clip in clips]
    clips_json.write_text(json.dumps(clips))  # ensure_ascii: the surrogate is stored as \udcff
    out = tmp_path / "out"
    before = previous_outputs(out)
    query = next((work / "corpus").rglob("clip_000.npy"))
    done = mwga("attribute", str(old), str(query), "--top-k", "12", "--out", str(out), cwd=work)
    assert_one_line_error(done, "not valid UTF-8", "mwga index")
    assert folder_contents(out) == before


def test_a_query_name_that_is_not_utf8_is_a_one_line_error(
    indexed: tuple[Path, Path], tmp_path: Path
) -> None:
    work, _ = indexed
    (tmp_path / "queries").mkdir()
    shutil.copy(next((work / "corpus").rglob("clip_000.npy")), tmp_path / "queries" / "good.npy")
    query = non_utf8_name(tmp_path / "queries", b"query_\xfe")
    done = mwga("attribute", "index", str(query), "--out", str(tmp_path / "out"), cwd=work)
    assert_one_line_error(done, "query_\\xfe.npy", "not valid UTF-8")
    assert not (tmp_path / "out").exists()


# -- symbolic links ----------------------------------------------------------------------------------------


LINKS = {"dangling": ("nowhere.mp4", "dangling link"), "loop": ("loop.mp4", "in a loop")}


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_a_broken_link_in_the_corpus_is_a_one_line_error(corpus: Path, tmp_path: Path, kind: str) -> None:
    target, reason = LINKS[kind]
    (corpus / f"{kind}.mp4").symlink_to(target)  # the loop: loop.mp4 -> loop.mp4
    done = mwga("index", "corpus", "--out", "index", *SMALL, cwd=tmp_path)
    assert_one_line_error(done, f"{kind}.mp4", reason)
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_a_broken_link_in_the_corpus_is_skipped_with_its_reason(
    corpus: Path, tmp_path: Path, kind: str
) -> None:
    target, reason = LINKS[kind]
    (corpus / f"{kind}.mp4").symlink_to(target)
    done = mwga("index", "corpus", "--out", "index", *SMALL, "dataset.on_error=skip", cwd=tmp_path)
    assert_ok(done)
    assert "Traceback" not in done.stderr and "skipped: " in done.stderr and reason in done.stderr
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [Path(s["file"]).name for s in manifest["skipped"]] == [f"{kind}.mp4"]
    assert reason in manifest["skipped"][0]["reason"] and manifest["count"] == 12


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_a_broken_link_as_query_is_a_one_line_error(
    indexed: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    work, _ = indexed
    target, reason = LINKS[kind]
    link = tmp_path / f"{kind}.mp4"
    link.symlink_to(target)
    done = mwga("attribute", "index", str(link), "--out", str(tmp_path / "out"), cwd=work)
    assert_one_line_error(done, f"{kind}.mp4", reason)
    assert not (tmp_path / "out").exists()


# -- a labels file that is not a CSV ----------------------------------------------------------------------


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)


@pytest.mark.parametrize("content", [os.urandom(4000), PNG_HEADER], ids=["random-bytes", "png"])
def test_a_binary_labels_file_is_a_one_line_error(corpus: Path, tmp_path: Path, content: bytes) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content)
    done = mwga("index", "corpus", "--out", "index", *SMALL, f"dataset.labels={labels}", cwd=tmp_path)
    assert_one_line_error(done, str(labels), "UTF-8", "clip,label")
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_a_labels_file_with_nul_bytes_is_a_one_line_error(corpus: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"clip,label\n\x00\x00\x00,x\n")  # valid UTF-8, still no CSV
    done = mwga("index", "corpus", "--out", "index", *SMALL, f"dataset.labels={labels}", cwd=tmp_path)
    assert_one_line_error(done, str(labels), "clip,label")


# -- corrupt and empty clips ---------------------------------------------------------------------------


BAD_CLIPS = {
    "corrupt.mp4": (os.urandom(3000), "cannot be decoded"),
    "empty.mp4": (b"", "empty file (0 bytes)"),
    "empty.npy": (b"", "empty file (0 bytes)"),
    "text.npy": (b"not an array", "no NumPy header"),
}


@needs_av
@pytest.mark.parametrize("name", sorted(BAD_CLIPS))
def test_a_bad_clip_in_the_corpus_is_a_one_line_error_or_skipped(
    corpus: Path, tmp_path: Path, name: str
) -> None:
    content, reason = BAD_CLIPS[name]
    (corpus / name).write_bytes(content)
    done = mwga("index", "corpus", "--out", "index", *SMALL, cwd=tmp_path)
    line = assert_one_line_error(done, name, reason)
    assert line.count(name) == 1  # the decoder's own message does not repeat the file name
    assert not (tmp_path / "index" / "manifest.json").exists()

    done = mwga("index", "corpus", "--out", "index", *SMALL, "dataset.on_error=skip", cwd=tmp_path)
    assert_ok(done)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [Path(s["file"]).name for s in manifest["skipped"]] == [name] and manifest["count"] == 12


# -- queries that cannot be attributed -------------------------------------------------------------------


def _static_clip(path: Path) -> None:
    np.save(path, np.full((8, 24, 24), 120, dtype=np.uint8))  # no motion at all


QUERIES = {
    "corrupt.mp4": (lambda path: path.write_bytes(os.urandom(3000)), "cannot be decoded"),
    "empty.mp4": (lambda path: path.write_bytes(b""), "empty file (0 bytes)"),
    "empty.npy": (lambda path: path.write_bytes(b""), "empty file (0 bytes)"),
    "static.npy": (_static_clip, "no motion"),
}


@needs_av
@pytest.mark.parametrize("name", sorted(QUERIES))
def test_a_query_that_cannot_be_attributed_writes_nothing(
    indexed: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    work, _ = indexed
    make, reason = QUERIES[name]
    make(tmp_path / name)
    good = next((work / "corpus").rglob("clip_000.npy"))
    out = tmp_path / "out"
    before = previous_outputs(out)
    done = mwga("attribute", "index", str(good), str(tmp_path / name), "--out", str(out), cwd=work)
    assert_one_line_error(done, name, reason)
    assert folder_contents(out) == before  # the good query's results were not written either


def test_attribute_out_pointing_at_a_file_is_refused(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    work, _ = indexed
    (tmp_path / "taken").write_text("keep me")
    query = next((work / "corpus").rglob("clip_000.npy"))
    done = mwga("attribute", "index", str(query), "--out", str(tmp_path / "taken"), cwd=work)
    assert_one_line_error(done, "--out", "a folder")
    assert (tmp_path / "taken").read_text() == "keep me"
