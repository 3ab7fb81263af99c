"""Projected features on disk, so that a run killed mid-featurization resumes where it stopped.

One store holds the (K, N, P) float32 features of one split for one feature-determining configuration::

    <cache_dir>/features/<key>/
        manifest.json   what was computed with which config (see :meth:`FeatureStore.manifest`)
        features.npy    (K, N, P) float32 numpy memmap, rows filled as chunks finish
        done.npy        (N,) bool: which clips' rows are final

``<key>`` hashes everything that changes the features (:func:`feature_key_parts`): the split, the
dataset, motion, descriptor, gradient, projection and model configs, the run seed, the mwga version, the
gradient source's model checkpoint id, and a fingerprint of the clips themselves (frames, labels, ids),
so generated queries or edited data files never hit stale features. Scorer, eval, output paths and
device are not part of it.

Each finished chunk is flushed to ``features.npy`` *before* ``done.npy`` is atomically replaced, so a
crash at any point leaves at worst a few rows to recompute, never a row marked done that is not.

A store whose manifest is unreadable, or disagrees with this run (any key part, shape), or whose
arrays are missing or malformed, is **discarded and recomputed** with a warning
naming the store and the reason: features are a cache, deterministic from the config, so recomputing is
always correct and a damaged cache never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from mwga_core import __version__
from mwga_core.api.clips import AnalysedClips
from mwga_core.config.schema import group_configs

FORMAT_VERSION = 1
#: config groups whose values determine the features (when the run config has them)
FEATURE_GROUPS = ("dataset", "motion", "descriptor", "gradient", "projection", "model")


class StaleStoreError(Exception):
    """A store on disk that cannot be used for this run; the message says why."""


def clips_fingerprint(clips: AnalysedClips) -> str:
    """A content hash of the clips: frames (bytes and shape), labels and ids."""
    digest = hashlib.blake2b(digest_size=16)
    frames = np.ascontiguousarray(clips.clips.frames)
    digest.update(repr((frames.shape, str(frames.dtype))).encode())
    digest.update(memoryview(frames).cast("B"))
    digest.update(np.ascontiguousarray(clips.clips.labels, dtype=np.int64).tobytes())
    digest.update("\0".join(clips.clips.ids).encode())
    return digest.hexdigest()


def feature_key_parts(
    cfg: DictConfig, split: str, clips: AnalysedClips, checkpoint_id: str | None = None
) -> dict[str, Any]:
    """Everything that determines one split's features, as plain JSON-able data.

    The model config is included even for gradient sources that use no model (a harmless recompute
    when it changes), because a source that forgets to report ``checkpoint_id`` must not reuse
    features of another model.
    """
    config = group_configs(cfg, FEATURE_GROUPS)
    return {
        "format": FORMAT_VERSION,
        "mwga_version": __version__,
        "split": split,
        "seed": int(cfg.seed),
        "config": config,
        "checkpoint_id": checkpoint_id,
        "clips": {"count": len(clips), "fingerprint": clips_fingerprint(clips)},
    }


def feature_key(parts: dict[str, Any]) -> str:
    """The store's folder name: a hash of :func:`feature_key_parts`."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class FeatureStore:
    """The on-disk features of one split; open with :meth:`open`.

    Attributes:
        path: the store's folder.
        done: (N,) bool, True for clips whose features are stored.
    """

    def __init__(self, path: Path, parts: dict[str, Any], console: Console | None = None) -> None:
        self.path = path
        self.parts = parts
        self.console = console or Console(stderr=True)
        self.count = int(parts["clips"]["count"])
        self.done = np.zeros(self.count, dtype=bool)
        self.shape: tuple[int, int, int] | None = None
        self._features: np.ndarray | None = None

    @classmethod
    def open(cls, cache_dir: Path, parts: dict[str, Any], console: Console | None = None) -> FeatureStore:
        """Open (resume) the store for ``parts``, or start an empty one; a stale store is discarded."""
        store = cls(Path(cache_dir) / "features" / feature_key(parts), parts, console)
        if store.path.exists():
            try:
                store._load()
            except StaleStoreError as error:
                store._discard(str(error))
        if not store.path.exists():
            store.path.mkdir(parents=True, exist_ok=True)
            store._write_manifest()
        return store

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def missing(self) -> np.ndarray:
        """(m,) int64 indices of the clips still to compute, ascending."""
        return np.flatnonzero(~self.done).astype(np.int64)

    def complete(self) -> bool:
        return bool(self.done.all())

    def write(self, indices: np.ndarray, features: np.ndarray) -> None:
        """Store the features of some clips and mark them done.

        Shape:
            indices: (n,) positions in the split.
            features: (K, n, P) float32.
        """
        indices = np.asarray(indices, dtype=np.int64)
        features = np.asarray(features, dtype=np.float32)
        if self._features is None:
            self.shape = (int(features.shape[0]), self.count, int(features.shape[2]))
            self._features = np.lib.format.open_memmap(
                self.path / "features.npy", mode="w+", dtype=np.float32, shape=self.shape
            )
            _save_npy_atomic(self.path / "done.npy", self.done)
            self._write_manifest()
        elif (features.shape[0], features.shape[2]) != (self.shape[0], self.shape[2]):
            raise RuntimeError(
                f"features of shape {features.shape} do not fit store {self.path} of shape {self.shape}"
            )
        self._features[:, indices] = features
        self._features.flush()
        self.done[indices] = True
        _save_npy_atomic(self.path / "done.npy", self.done)
        self._write_manifest()

    def read(self) -> np.ndarray:
        """(K, N, P) float32 features of every clip, in memory; all clips must be done."""
        if not self.complete() or self._features is None:
            raise RuntimeError(
                f"feature store {self.path} is incomplete: {int((~self.done).sum())} clips missing"
            )
        return np.array(self._features, dtype=np.float32)

    def manifest(self) -> dict[str, Any]:
        """What the store holds and how it was computed."""
        return {
            **self.parts,
            "key": self.path.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": "float32",
            "clips_done": int(self.done.sum()),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _write_manifest(self) -> None:
        _write_json_atomic(self.manifest_path, self.manifest())

    def _load(self) -> None:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise StaleStoreError(f"its manifest cannot be read ({error})") from None
        if not isinstance(manifest, dict):
            raise StaleStoreError("its manifest is not a JSON object")
        for field in self.parts:
            if manifest.get(field) != self.parts[field]:
                found, expected = repr(manifest.get(field))[:200], repr(self.parts[field])[:200]
                raise StaleStoreError(f"its manifest's {field!r} is {found}, this run has {expected}")
        shape = manifest.get("shape")
        if shape is None:
            return
        if not (isinstance(shape, list) and len(shape) == 3 and shape[1] == self.count):
            raise StaleStoreError(f"its manifest's shape {shape!r} does not hold {self.count} clips")
        try:
            # mode "r" refuses a truncated file; "r+" would silently extend it with zeros
            np.load(self.path / "features.npy", mmap_mode="r")
            features = np.load(self.path / "features.npy", mmap_mode="r+")
            done = np.load(self.path / "done.npy")
        except (OSError, ValueError) as error:
            raise StaleStoreError(f"its arrays cannot be read ({error})") from None
        if features.shape != tuple(shape) or features.dtype != np.float32:
            raise StaleStoreError(
                f"features.npy has shape {features.shape} {features.dtype}, expected {shape} float32"
            )
        if done.shape != (self.count,) or done.dtype != bool:
            raise StaleStoreError(
                f"done.npy has shape {done.shape} {done.dtype}, expected ({self.count},) bool"
            )
        self.shape = tuple(shape)
        self._features = features
        self.done = done.copy()

    def _discard(self, reason: str) -> None:
        message = f"recomputing features: the store {self.path} is stale: {reason}."
        self.console.print(f"[yellow]warning:[/] {escape(message)}")
        self._features = None
        self.shape = None
        self.done = np.zeros(self.count, dtype=bool)
        shutil.rmtree(self.path, ignore_errors=True)
