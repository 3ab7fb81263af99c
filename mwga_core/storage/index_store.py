"""The on-disk layout of an ``mwga index`` (:mod:`mwga_core.retrieval.index` decides what goes in it).

Layout of ``<index>/``::

    manifest.json        what the index holds and the full config that made it (written last)
    .index.lock          held by the ``mwga index`` run updating the index (filelock)
    data-<n>/            the consolidated index the manifest points to
        clips.json       one record per clip, row i = feature row i: id, size, mtime_ns, label
        features.npy     (K, N, P) float32 projected gradients (the scorer's input)
        descriptors.npy  (N, B) float32 motion descriptors
        static.npy       (N,) bool: clips with (almost) no motion
        flows.npy        (N, T-1, H, W, 2) float16 optical flow, only with --keep-flows
        scoring/         the scorer's whole-index step and search index, made from the rows for one
                         scorer config (:mod:`mwga_core.retrieval.prepared_scoring` writes and reads it)
    shards/shard-<m>/    clips computed by a run that has not consolidated yet (same files per shard,
        shard.json       plus the rows key they were computed under)

Every folder of rows is written into a hidden temporary folder and renamed into place, and every JSON
file is replaced atomically (:mod:`mwga_core.storage.atomic`), so a kill leaves only whole shards and
either the old or the new manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core.api.errors import DataError
from mwga_core.storage.atomic import temp_path, write_json_atomic

#: bump when the layout changes meaning (an index of another format is refused: --rebuild)
FORMAT_VERSION = 1
#: the arrays of every data or shard folder (``flows`` is optional)
ARRAYS = ("features", "descriptors", "static")
MANIFEST = "manifest.json"
#: the folder of resumable batches a run writes before it consolidates them into ``data-<n>/``
SHARDS = "shards"
SHARD_META = "shard.json"


@dataclass
class IndexData:
    """A loaded index (arrays memory-mapped read-only).

    Shape:
        features: (K, N, P) float32; descriptors: (N, B) float32; static: (N,) bool;
        flows: (N, T-1, H, W, 2) float16 or None.
    """

    path: Path
    manifest: dict[str, Any]
    clips: list[dict[str, Any]]
    features: np.ndarray
    descriptors: np.ndarray
    static: np.ndarray
    flows: np.ndarray | None = None

    @property
    def ids(self) -> list[str]:
        return [clip["id"] for clip in self.clips]


def _made_by_an_index(entry: Path) -> bool:
    """What an index folder holds: its manifest, data folders, shards and temporary files."""
    name = entry.name
    return (
        name in (MANIFEST, SHARDS)
        or re.fullmatch(r"data-\d+", name) is not None
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def check_index_folder(index_dir: Path, corpus_dir: Path) -> None:
    """Refuse an ``--out`` that is not an index mwga made (or a new or empty folder), before any write.

    ``mwga index --rebuild`` deletes ``index_dir``; this check is what keeps it from deleting a folder of
    someone else's files, the corpus itself or a folder that holds it.

    Raises:
        DataError: ``index_dir`` is a file, holds files an index does not write, contains the corpus or
            lies inside it.
    """
    index_dir, corpus_dir = Path(index_dir).expanduser().resolve(), Path(corpus_dir).expanduser().resolve()
    if index_dir.exists() and not index_dir.is_dir():
        raise DataError(f"--out {index_dir} is a file, not an index folder: choose a folder.")
    if index_dir == corpus_dir or corpus_dir.is_relative_to(index_dir):
        raise DataError(
            f"--out {index_dir} contains the corpus {corpus_dir}: the index needs a folder of its own."
        )
    if index_dir.is_relative_to(corpus_dir):
        raise DataError(
            f"--out {index_dir} lies inside the corpus {corpus_dir}: its files would be read as clips. "
            "Put the index outside the corpus folder."
        )
    if not index_dir.is_dir():
        return
    foreign = sorted(entry.name for entry in index_dir.iterdir() if not _made_by_an_index(entry))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DataError(
            f"--out {index_dir} is not an mwga index (it holds {shown}): mwga index writes (and --rebuild "
            "deletes) only a new folder or an index it made. Choose another --out."
        )


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    """The manifest of ``index_dir``, or None when there is none yet; unreadable -> DataError."""
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: the index manifest cannot be read ({error}); use --rebuild.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: not an mwga index manifest of format {FORMAT_VERSION}; use --rebuild.")
    return manifest


def write_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (the last step of a run: it names the data folder to use)."""
    write_json_atomic(Path(index_dir) / MANIFEST, manifest)


def load_index(index_dir: str | Path) -> IndexData:
    """Open the index at ``index_dir``; a missing or damaged index raises DataError naming the path."""
    index_dir = Path(index_dir).expanduser()
    manifest = read_manifest(index_dir)
    if manifest is None:
        raise DataError(f"{index_dir}: no mwga index here (no manifest.json); make one with `mwga index`.")
    data = index_dir / manifest["data"]
    try:
        clips = json.loads((data / "clips.json").read_text())
        arrays = {name: np.load(data / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        flows = np.load(data / "flows.npy", mmap_mode="r") if (data / "flows.npy").exists() else None
    except (OSError, ValueError) as error:
        raise DataError(f"{data}: the index data cannot be read ({error}); run `mwga index` again.") from None
    if arrays["features"].shape[1] != len(clips):
        raise DataError(f"{data}: features hold {arrays['features'].shape[1]} rows for {len(clips)} clips.")
    damaged = np.flatnonzero(~finite_rows(arrays["features"]))
    if damaged.size:
        names = ", ".join(clips[row]["id"] for row in damaged[:5]) + (" ..." if damaged.size > 5 else "")
        raise DataError(
            f"{data / 'features.npy'}: {damaged.size} clip(s) have non-finite features ({names}): the file is "
            "damaged. Run `mwga index` on the corpus again: it recomputes those clips."
        )
    return IndexData(index_dir, manifest, clips, flows=flows, **arrays)


@dataclass
class RowSource:
    """Rows that can be reused: the consolidated data or one shard.

    Attributes:
        path: the data or shard folder.
        rows: clip identity ``(id, size, mtime_ns)`` -> row.
        arrays: the folder's arrays, memory-mapped read-only.
    """

    path: Path
    rows: dict[tuple, int]
    arrays: dict[str, np.ndarray]


def open_rows(path: Path, rows_key: str | None = None) -> RowSource | None:
    """The rows of a data or shard folder, or None when unreadable (recomputed, never trusted).

    With ``rows_key``, a shard is used only when its ``shard.json`` names that key.
    """
    try:
        if rows_key is not None and json.loads((path / SHARD_META).read_text()) != {"key": rows_key}:
            return None
        clips = json.loads((path / "clips.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        if (path / "flows.npy").exists():
            arrays["flows"] = np.load(path / "flows.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if any(len(array) != len(clips) for name, array in arrays.items() if name != "features"):
        return None
    finite = finite_rows(arrays["features"])  # a damaged row is recomputed, never reused
    rows = {(c["id"], c["size"], c["mtime_ns"]): row for row, c in enumerate(clips) if finite[row]}
    return RowSource(path, rows, arrays)


def finite_rows(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Which clips' features are all finite, read in chunks of clips so a memory-mapped index stays mapped.

    Shape:
        features: (K, N, P). returns: (N,) bool.
    """
    finite = np.empty(features.shape[1], dtype=bool)
    for start in range(0, features.shape[1], chunk):
        block = np.asarray(features[:, start : start + chunk])
        finite[start : start + chunk] = np.isfinite(block).all(axis=(0, 2))
    return finite


def write_rows(
    folder: Path, clips: list[dict], arrays: dict[str, np.ndarray], rows_key: str | None = None
) -> None:
    """Write one shard (with ``rows_key``) or data folder into a temporary folder, then rename it into place."""
    tmp = temp_path(folder)
    tmp.mkdir(parents=True)
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        (tmp / "clips.json").write_text(json.dumps(clips))
        if rows_key is not None:
            (tmp / SHARD_META).write_text(json.dumps({"key": rows_key}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def gather_rows(picks: list[tuple[RowSource, int]], keep_flows: bool) -> dict[str, np.ndarray]:
    """The rows ``picks`` names, in that order, as new arrays (grouped by source, one fancy index each)."""
    if not picks:
        raise DataError("the corpus folder holds no usable clip: nothing to index.")
    names = [*ARRAYS, "flows"] if keep_flows else list(ARRAYS)
    first = picks[0][0].arrays
    out = {}
    for name in names:
        template = first[name]
        axis = 1 if name == "features" else 0
        shape = list(template.shape)
        shape[axis] = len(picks)
        out[name] = np.empty(shape, dtype=template.dtype)
    by_source: dict[int, tuple[RowSource, list[int], list[int]]] = {}
    for position, (source, row) in enumerate(picks):
        entry = by_source.setdefault(id(source), (source, [], []))
        entry[1].append(position)
        entry[2].append(row)
    for source, positions, rows in by_source.values():
        for name in names:
            if name == "features":
                out[name][:, positions] = source.arrays[name][:, rows]
            else:
                out[name][positions] = source.arrays[name][rows]
    return out
