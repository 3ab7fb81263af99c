"""Finding clip files on disk for ``dataset=video_folder``, and reading its labels CSV.

A folder is searched recursively, sorted by path, hidden entries ignored. An entry counts as a clip by its
name alone (a video suffix, ``.npy``, or a folder holding image frames); one that counts as a clip but can
never be read is still returned, with a :attr:`~mwga_core.api.datasets.ClipFile.problem`, so the dataset's
``on_error`` policy decides whether it stops the run or is listed as skipped:

* a name that is not valid UTF-8: clip ids are written as UTF-8 text (JSON, CSV, the terminal), and such a
  name has no faithful text form; its id shows the bytes as ``\\xNN``, and the file must be renamed;
* a symbolic link to nothing (dangling) or to itself (a loop);
* an entry whose size and time cannot be read (``stat`` fails, e.g. permission denied).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
from pathlib import Path

from mwga_core.api.datasets import ClipFile, is_utf8_text, path_text
from mwga_core.api.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    """The frames of an image-sequence folder, in natural name order (``f2.png`` before ``f10.png``)."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )


def _link_problem(path: Path) -> str | None:
    """Why the symbolic link ``path`` leads to no file, or None when it does (or is no link)."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return f"a symbolic link to {path_text(os.readlink(path))}, which does not exist (dangling link)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link in a loop (it never reaches a file)"
        return f"a symbolic link that cannot be followed ({error.strerror or error})"
    return None


def _unusable(path: Path, clip_id: str, kind: str, reason: str) -> ClipFile:
    """A clip entry that :meth:`read_clip` will refuse with ``reason`` (its id shown as text)."""
    try:
        stat = path.lstat()
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime_ns = 0, 0
    return ClipFile(path_text(clip_id), path, kind, size, mtime_ns, problem=f"{path_text(path)}: {reason}.")


def clip_file(path: Path, clip_id: str) -> ClipFile | None:
    """The clip at ``path`` (a video, a .npy or a folder of frames), or None when it is none of these.

    An entry named like a clip that cannot be read is returned with its ``problem`` (module docstring).
    """
    if path.is_dir():
        frames = image_files(path)
        if not frames:
            return None
        kind = "images"
    else:
        suffix = path.suffix.lower()
        kind = "video" if suffix in VIDEO_SUFFIXES else "npy" if suffix == ".npy" else None
        if kind is None:
            return None
    if not is_utf8_text(clip_id):
        return _unusable(
            path,
            clip_id,
            kind,
            "the name is not valid UTF-8, and clip ids are written as UTF-8 text; rename it",
        )
    if (link := _link_problem(path)) is not None:
        return _unusable(path, clip_id, kind, link)
    try:
        stats = [f.stat() for f in frames] if kind == "images" else [path.stat()]
    except OSError as error:
        return _unusable(path, clip_id, kind, f"cannot be read ({error.strerror or error})")
    return ClipFile(clip_id, path, kind, sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))


def scan_folder(folder: str | Path) -> list[ClipFile]:
    """Every clip under ``folder``, sorted by id. Raises DataError when the folder does not exist."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{path_text(root)}: not a folder of clips (it does not exist or is not a directory)."
        )
    found: list[ClipFile] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(current)
        if here != root:
            clip = clip_file(here, here.relative_to(root).as_posix())
            if clip is not None:  # a folder of frames is one clip: do not descend into it
                found.append(clip)
                dirs[:] = []
                continue
        for name in files:
            if name.startswith("."):
                continue
            clip = clip_file(here / name, (here / name).relative_to(root).as_posix())
            if clip is not None:
                found.append(clip)
    return sorted(found, key=lambda c: c.id)


def read_label_csv(path: Path) -> dict[str, str]:
    """``clip -> label`` from a UTF-8 CSV with the header ``clip,label``; DataError naming the file when it
    cannot be read or is no such CSV (binary data, another encoding, other columns)."""
    expected = "expected a CSV file in UTF-8 with the header clip,label"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(
            f"{path_text(path)}: the labels file cannot be read ({error.strerror or error})."
        ) from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as spreadsheet programs write, is fine
        if "\x00" in text:
            raise ValueError("it holds NUL bytes")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, ValueError, csv.Error) as error:
        reason = "it is not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
        raise DataError(f"{path_text(path)}: not a labels file ({reason}); {expected}.") from None
    if rows and not {"clip", "label"} <= set(rows[0]):
        raise DataError(
            f"{path_text(path)}: the labels file needs the columns clip,label; found {list(rows[0])}."
        )
    return {row["clip"]: row["label"] for row in rows if row.get("label")}
