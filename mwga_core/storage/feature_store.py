"""The resumable entry of the stage cache: one split's projected features, filled chunk by chunk.

Featurization is the longest stage, so its output is stored as it is computed and a run killed midway
resumes with only the missing clips. It lives under the ``features`` stage of the stage cache, keyed
like every stage (``features = hash(gradients key, projection config, projector code, seed)``, see
:mod:`mwga_core.storage.stage_cache`), so editing the projector's, the gradient source's or any upstream
component's module gives a new key and recomputes the features::

    <cache.dir>/stages/features/.<key>.lock         the entry's lock (filelock), held while filling it
    <cache.dir>/stages/features/.partial-<key>/     being filled (only ever by the lock holder)
        features.npy    (K, N, P) float32 numpy memmap, rows filled as chunks finish
        done.npy        (N,) bool: which clips' rows are final
    <cache.dir>/stages/features/<key>/              complete: an ordinary stage-cache entry
        features.npy    (K, N, P) float32
        manifest.json   stage, key, shapes, dtypes and checksums (verified on every read)

Each finished chunk is flushed to ``features.npy`` *before* ``done.npy`` is atomically replaced, so a
crash at any point leaves at worst a few rows to recompute, never a row marked done that is not. Once
every row is done the partial folder gets its manifest and is renamed into place.

Concurrency: a complete entry is immutable and read without a lock. To fill one, a process takes the
entry's lock (waiting as long as another process holds it), then looks again: when the other process
finished the entry meanwhile it reads that, else it resumes the partial folder. So no process ever
re-creates ``features.npy`` under another one's memmap.

A partial folder whose arrays are missing or malformed, and a complete entry that fails its checks
(manifest, shapes, checksums), is **discarded and recomputed** with a warning naming the folder and the
reason: features are a cache, deterministic from the config, so recomputing is always correct and a
damaged cache never stops a run.

Neither does a cache that cannot be written (a read-only folder, a file where a folder should be): a
complete entry is still read, and otherwise the features are kept in memory only, after the stage
cache's one warning (:meth:`~mwga_core.storage.stage_cache.StageCache.cannot_write`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core.storage.atomic import entry_lock, lock_path, save_npy_atomic
from mwga_core.storage.stage_cache import PendingEntry, StageCache

STAGE = "features"
log = logging.getLogger("mwga")


class DamagedPartialError(Exception):
    """A partial features folder that cannot be resumed; the message says why."""


class FeatureStore:
    """The features entry of one split; open with :meth:`open` (a context manager).

    Attributes:
        key: the features key (the stage cache's ``features`` stage).
        count: N, the number of clips of the split.
        done: (N,) bool, True for clips whose features are stored.
        shape: (K, N, P) once known (the first chunk written, or the entry read), else None.
    """

    def __init__(self, cache: StageCache, key: str, count: int, config: Any = None) -> None:
        self.cache = cache
        self.key = key
        self.count = int(count)
        self.config = config
        self.done = np.zeros(self.count, dtype=bool)
        self.shape: tuple[int, int, int] | None = None
        self._features: np.ndarray | None = None
        self._committed = False
        #: the features are kept in memory only (the cache cannot be written)
        self._in_memory = False

    @property
    def path(self) -> Path:
        """The complete entry's folder."""
        return self.cache.path(STAGE, self.key)

    @property
    def partial_path(self) -> Path:
        """The folder the entry is filled in until complete."""
        return self.path.with_name(f".partial-{self.key}")

    @classmethod
    @contextmanager
    def open(cls, cache: StageCache, key: str, count: int, config: Any = None) -> Iterator[FeatureStore]:
        """The complete entry, or the entry to fill (resumed where a killed run stopped), locked.

        Args:
            cache: the stage cache (must be enabled).
            key: the split's features key.
            count: N, the split's number of clips.
            config: the projection config, recorded in the entry's manifest.

        The lock is held for the whole block when the entry is not complete yet: fill it inside. When
        the cache cannot be written (the lock cannot be taken, or a write failed before), the entry is
        filled in memory and not stored.
        """
        if not cache.enabled:
            raise ValueError("the features entry lives in the stage cache, which is disabled")
        store = cls(cache, key, count, config)
        if store._read_complete():
            yield store
            return

        def say_why_we_wait() -> None:
            log.info(f"another run is computing the features {store.path}; waiting for it")

        with ExitStack() as held:
            if cache.writable:
                try:
                    held.enter_context(entry_lock(store.path, on_wait=say_why_we_wait))
                except OSError as error:
                    cache.cannot_write(lock_path(store.path), error)
            if not cache.writable:
                store._in_memory = True
                yield store
                return
            # another process may have completed the entry while this one waited for the lock
            if not store._read_complete():
                try:
                    store._resume()
                except DamagedPartialError as error:
                    cache.warning(
                        f"recomputing features: the partial entry {store.partial_path} is damaged: {error}."
                    )
                    store._discard()
            try:
                yield store
            finally:
                store._features = None  # drop the memmap before another process may take the folder

    def missing(self) -> np.ndarray:
        """(m,) int64 indices of the clips still to compute, ascending."""
        return np.flatnonzero(~self.done).astype(np.int64)

    def complete(self) -> bool:
        return bool(self.done.all())

    def write(self, indices: np.ndarray, features: np.ndarray) -> None:
        """Store the features of some clips and mark them done (only inside :meth:`open`'s block).

        Shape:
            indices: (n,) positions in the split.
            features: (K, n, P) float32.
        """
        indices = np.asarray(indices, dtype=np.int64)
        features = np.asarray(features, dtype=np.float32)
        if self._committed:
            raise RuntimeError(f"features entry {self.path} is complete; it is not written again")
        if self._features is None:
            self.shape = (int(features.shape[0]), self.count, int(features.shape[2]))
            self._features = self._new_features()
        elif (features.shape[0], features.shape[2]) != (self.shape[0], self.shape[2]):
            raise RuntimeError(
                f"features of shape {features.shape} do not fit entry {self.partial_path} of shape {self.shape}"
            )
        self._features[:, indices] = features
        self.done[indices] = True
        if self._in_memory:
            return
        try:
            self._features.flush()
            save_npy_atomic(self.partial_path / "done.npy", self.done)
        except OSError as error:
            self._stop_storing(self.partial_path, error)

    def _new_features(self) -> np.ndarray:
        """(K, N, P) float32 zeros to fill: a memmap in the partial folder, or in memory only."""
        if not self._in_memory:
            try:
                self.partial_path.mkdir(parents=True, exist_ok=True)
                features = np.lib.format.open_memmap(
                    self.partial_path / "features.npy", mode="w+", dtype=np.float32, shape=self.shape
                )
                save_npy_atomic(self.partial_path / "done.npy", self.done)
                return features
            except OSError as error:
                self._stop_storing(self.partial_path, error)
        return np.zeros(self.shape, dtype=np.float32)

    def _stop_storing(self, path: Path, error: OSError) -> None:
        """A write failed: warn (once per run, by the stage cache) and keep the features in memory."""
        self.cache.cannot_write(path, error)
        if self._features is not None:
            self._features = np.array(self._features, dtype=np.float32)
        self._in_memory = True

    def read(self) -> np.ndarray:
        """(K, N, P) float32 features of every clip, in memory; all clips must be done.

        The first read of a just-completed entry moves it into place (a complete stage-cache entry).
        """
        if not self.complete() or self._features is None:
            raise RuntimeError(
                f"features entry {self.path} is incomplete: {int((~self.done).sum())} clips missing"
            )
        if not (self._committed or self._in_memory):
            self._features.flush()
            self._features = np.array(self._features, dtype=np.float32)  # release the file's write map
            try:
                self._commit()
            except OSError as error:
                self._stop_storing(self.partial_path, error)
        return np.array(self._features, dtype=np.float32)

    def _commit(self) -> None:
        (self.partial_path / "done.npy").unlink()
        pending = PendingEntry(self.path, folder=self.partial_path)
        pending.commit(STAGE, self.key, self.config, {"clips": self.count, "shape": list(self.shape)})
        self._committed = True

    def _read_complete(self) -> bool:
        found = self.cache.load(STAGE, self.key, {"features": (None, self.count, None)}, mmap=True)
        if found is None:
            return False
        features = found[0]["features"]
        if features.ndim != 3 or features.dtype != np.float32:
            self.cache.warning(f"ignoring the cache entry {self.path}: features.npy is not (K, N, P) float32")
            StageCache.remove(self.path)
            return False
        self._features = features
        self.shape = tuple(int(s) for s in features.shape)
        self.done[:] = True
        self._committed = True
        return True

    def _resume(self) -> None:
        """Load the partial folder's rows, if there is one."""
        folder = self.partial_path
        features_file, done_file = folder / "features.npy", folder / "done.npy"
        if not features_file.exists() and not done_file.exists():
            return
        try:
            # mode "r" refuses a truncated file; "r+" would silently extend it with zeros
            np.load(features_file, mmap_mode="r")
            features = np.load(features_file, mmap_mode="r+")
            done = np.load(done_file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DamagedPartialError(f"its arrays cannot be read ({error})") from None
        if features.ndim != 3 or features.shape[1] != self.count or features.dtype != np.float32:
            raise DamagedPartialError(
                f"features.npy has shape {features.shape} {features.dtype}, expected (K, {self.count}, P) float32"
            )
        if done.shape != (self.count,) or done.dtype != bool:
            raise DamagedPartialError(
                f"done.npy has shape {done.shape} {done.dtype}, expected ({self.count},) bool"
            )
        self.shape = tuple(int(s) for s in features.shape)
        self._features = features
        self.done = done.copy()

    def _discard(self) -> None:
        self._features = None
        self.shape = None
        self.done = np.zeros(self.count, dtype=bool)
        shutil.rmtree(self.partial_path, ignore_errors=True)
