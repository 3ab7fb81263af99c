"""The stage cache: every stage's output on disk, keyed by its config and its inputs' keys.

Each stage's key is :func:`mwga_core.storage.keys.entry_key` of its component's config and code, the keys of
the stage outputs it reads, the run seed and :data:`FORMAT_VERSION`, so the keys form a chain::

    dataset      = hash(dataset config, seed, dataset fingerprint, code)
    flows        = hash(dataset key, split, motion config, code)
    descriptors  = hash(flows key, descriptor config, code)
    gradients    = hash(descriptors key, gradient config, checkpoint id, model config, device, code)
    features     = hash(gradients key, projection config, code)      (resumable: storage.feature_store)
    scores       = hash(train features key, query features key, scorer config, code)

Changing ``projection.dim`` changes only the features and scores keys: flows, descriptors, the model
and the raw gradients are read back. Editing a component's module (or a base class's module) changes
its code hash and so every key downstream of it.

An entry is a folder ``<cache.dir>/stages/<stage>/<key>/`` holding one ``.npy`` per array and a
``manifest.json`` (stage, key, config that made it, mwga version, created time, every array's shape,
dtype and checksum, extra metadata). It is written into a hidden temporary folder beside it and renamed
into place, so readers never see a half-written entry; when two processes write the same key at once,
the first rename wins and the other discards its copy (both computed the same thing). A reader checks
the manifest and the shape, dtype and checksum of every array; a damaged entry is a miss, reported with a
warning naming its folder, and removed.

A cache that cannot be written (a read-only folder, a file where a folder should be) never stops a run:
entries are still read, the first write that fails is reported with one warning naming the file or
folder at fault (:func:`unwritable_warning`), and the rest of the run stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core import __version__
from mwga_core.storage.atomic import blocking_file, discard_folder, why_not_writable
from mwga_core.storage.keys import entry_key, plain

log = logging.getLogger("mwga")

#: bump when what an entry holds changes meaning (2: features entries, array checksums)
FORMAT_VERSION = 2
#: the stages the pipeline caches, in pipeline order
STAGES = ("dataset", "flows", "descriptors", "gradients", "features", "scores")
#: cache folders kept by other parts of mwga, listed by ``mwga cache info``
OTHER_CACHES = ("models",)
MANIFEST = "manifest.json"
#: bytes read at a time when checksumming an array file
_CHECKSUM_BLOCK = 1 << 24


def file_checksum(path: Path) -> str:
    """A content hash of a file's bytes (blake2b, 16 bytes), read in blocks (files may be GiBs)."""
    hasher = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(_CHECKSUM_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


class DamagedEntryError(Exception):
    """An entry on disk that cannot be used; the message says why."""


#: the "cannot write" warnings given since the current run opened its stage cache: the stage cache and
#: the model store in one read-only folder would otherwise say the same thing twice
_unwritable_warned: set[str] = set()


def warn_unwritable(root: Path, path: Path, error: OSError, warn: Callable[[str], None]) -> None:
    """Pass :func:`unwritable_warning` to ``warn``, unless this run was told the same already."""
    message = unwritable_warning(root, path, error)
    if message not in _unwritable_warned:
        _unwritable_warned.add(message)
        warn(message)


def unwritable_warning(root: Path, path: Path, error: OSError) -> str:
    """The warning for a write into cache folder ``root`` (at ``path``) that failed with ``error``:
    what is at fault, that the run goes on storing nothing, and how to fix it."""
    reason = why_not_writable(path, error)
    blocker = blocking_file(Path(error.filename) if error.filename else path)
    if blocker is not None and Path(blocker) == Path(root):
        fix = "point cache.dir (MWGA_CACHE_DIR) at a folder"
    elif blocker is not None:
        fix = f"delete that file, e.g. with `mwga cache clear --dir {root}`"
    else:
        fix = "make it writable, or point cache.dir (MWGA_CACHE_DIR) at another folder"
    return f"cannot write to the cache: {reason}; this run goes on without storing its results there ({fix})."


@dataclass
class CachedOutput:
    """What :meth:`StageCache.fetch` returns: the stage's arrays and metadata, and where they came from."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    cached: bool
    key: str


class PendingEntry:
    """An entry being written into a hidden folder beside its place; :meth:`commit` renames it there.

    Args:
        target: the entry's final folder.
        folder: the folder to fill; None makes a fresh ``.tmp-<key>-<pid>-<random>`` one. The resumable
            features entry passes its own (kept across runs, guarded by the entry's lock).
    """

    def __init__(self, target: Path, folder: Path | None = None) -> None:
        self.target = target
        self._own_folder = folder is None
        target.parent.mkdir(parents=True, exist_ok=True)
        self.folder = folder or target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir(exist_ok=folder is not None)
        self._memmaps: dict[str, np.memmap] = {}

    def add(self, name: str, array: np.ndarray) -> None:
        """Write one whole array (``<name>.npy``)."""
        np.save(self.folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def memmap(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A writable ``.npy`` memmap, for arrays filled piece by piece."""
        array = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        self._memmaps[name] = array
        return array

    def commit(self, stage: str, key: str, config: Any, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the manifest and move the entry into place; an entry already there is kept.

        Every ``.npy`` file in the folder is an array of the entry (listed with its checksum). An
        :class:`OSError` writing the manifest is raised, after removing a temporary folder of its own.
        """
        for array in self._memmaps.values():
            array.flush()
        self._memmaps.clear()
        arrays = {}
        for path in sorted(self.folder.glob("*.npy")):
            array = np.load(path, mmap_mode="r")
            arrays[path.stem] = {
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "checksum": file_checksum(path),
            }
            del array
        manifest = {
            "format": FORMAT_VERSION,
            "stage": stage,
            "key": key,
            "mwga_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": plain(config),
            "arrays": arrays,
            "meta": dict(meta or {}),
        }
        try:
            (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        except OSError:
            if self._own_folder:
                self.abort()
            raise
        try:
            os.rename(self.folder, self.target)
        except OSError:
            # Another process renamed its copy first (same key, same content): keep that one.
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.target

    def abort(self) -> None:
        self._memmaps.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class StageCache:
    """Stage outputs under ``<root>/stages/``; with ``enabled=False`` every fetch computes.

    Attributes:
        root: the cache folder (``cache.dir``).
        enabled: read and write entries at all.
        events: ``(stage, label, "cached" | "computed")`` of every fetch, for the stage summary lines.
    """

    root: Path
    enabled: bool = True
    #: the run seed, part of every key (any stage may draw random numbers from it)
    seed: int = 0
    events: list[tuple[str, str, str]] = field(default_factory=list)
    warn: Callable[[str], None] | None = None
    #: why the first failed write failed (None while none has): from then on nothing is written
    write_error: str | None = field(default=None, init=False, repr=False)

    def key(
        self,
        stage: str,
        component: object | None = None,
        inputs: Sequence[str] = (),
        extra: Any = None,
        also_code: Sequence[object] = (),
    ) -> str:
        """The key of a stage output (:func:`~mwga_core.storage.keys.entry_key`).

        Args:
            stage: the stage name.
            component: the component computing it: its ``config`` and its classes' code go in.
            inputs: the keys of the stage outputs it reads.
            extra: anything else the output depends on (JSON-able).
            also_code: other objects whose classes' code the output depends on (e.g. the model adapter
                a gradient source differentiates).
        """
        return entry_key(
            stage,
            config=getattr(component, "config", None),
            inputs=inputs,
            components=[component, *also_code],
            seed=self.seed,
            format_version=FORMAT_VERSION,
            extra=extra,
        )

    def path(self, stage: str, key: str) -> Path:
        return Path(self.root) / "stages" / stage / key

    @property
    def writable(self) -> bool:
        """Whether entries are written: the cache is enabled and no write has failed in this run."""
        return self.enabled and self.write_error is None

    def cannot_write(self, path: Path, error: OSError) -> None:
        """Record that writing ``path`` failed: the first time warns (naming what is at fault), and no
        entry is written for the rest of the run; reads go on."""
        if self.write_error is None:
            self.write_error = why_not_writable(path, error)
            warn_unwritable(Path(self.root), path, error, self.warning)

    def load(
        self,
        stage: str,
        key: str,
        expect: Mapping[str, Sequence[int | None]] | None = None,
        mmap: bool = False,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays and metadata of an entry, or None when absent or damaged (warned and removed).

        ``expect`` maps array names to shapes (None = any size) that the entry must have.
        """
        folder = self.path(stage, key)
        if not (self.enabled and folder.is_dir()):
            return None
        try:
            return self._read(folder, stage, key, expect or {}, mmap)
        except DamagedEntryError as error:
            self.warning(f"ignoring the damaged cache entry {folder}: {error}; recomputing it.")
            self.remove(folder)
            return None

    def begin(self, stage: str, key: str) -> PendingEntry | None:
        """Start writing an entry (fill it, then :meth:`PendingEntry.commit`); None when the cache cannot
        be written (:meth:`cannot_write` warned)."""
        if not self.writable:
            return None
        try:
            return PendingEntry(self.path(stage, key))
        except OSError as error:
            self.cannot_write(self.path(stage, key), error)
            return None

    def save(
        self,
        stage: str,
        key: str,
        arrays: Mapping[str, np.ndarray],
        config: Any = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write an entry atomically (a concurrent writer of the same key may win; both are equal).

        Returns its folder, or None when the cache cannot be written (warned once, see :meth:`cannot_write`).
        """
        pending = self.begin(stage, key)
        if pending is None:
            return None
        try:
            for name, array in arrays.items():
                pending.add(name, array)
            return pending.commit(stage, key, config, meta)
        except OSError as error:
            pending.abort()
            self.cannot_write(pending.folder, error)
            return None
        except BaseException:
            pending.abort()
            raise

    def fetch(
        self,
        stage: str,
        key: str,
        compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
        *,
        label: str = "",
        config: Any = None,
        expect: Mapping[str, Sequence[int | None]] | None = None,
    ) -> CachedOutput:
        """The stage output from the cache, or ``compute()``d (returns ``(arrays, meta)``) and stored."""
        found = self.load(stage, key, expect)
        if found is not None:
            self.events.append((stage, label, "cached"))
            return CachedOutput(found[0], found[1], True, key)
        arrays, meta = compute()
        self.save(stage, key, arrays, config, meta)
        self.events.append((stage, label, "computed"))
        return CachedOutput(dict(arrays), dict(meta), False, key)

    @contextmanager
    def tracking(self, stage_info: dict) -> Iterator[None]:
        """Set ``stage_info["status"]`` (a ``ctx.stage`` dict) from the fetches made inside the block."""
        mark = len(self.events)
        yield
        stage_info["status"] = self.status_since(mark)

    def status_since(self, mark: int) -> str:
        """``cached``, ``computed`` or ``cached: a, b; computed: c`` for the fetches after ``mark``."""
        events = self.events[mark:]
        outcomes = {outcome for _, _, outcome in events}
        if len(outcomes) <= 1:
            return outcomes.pop() if outcomes else "computed"
        parts = {
            outcome: ", ".join(
                " ".join(filter(None, (label, stage))) for stage, label, o in events if o == outcome
            )
            for outcome in ("cached", "computed")
        }
        return f"cached: {parts['cached']}; computed: {parts['computed']}"

    @staticmethod
    def remove(folder: Path) -> None:
        """Delete an entry: renamed aside first, so a reader never sees it half-deleted (a read-only
        cache keeps it)."""
        discard_folder(folder)

    def warning(self, message: str) -> None:
        """Report a problem with the cache (``warn`` when given, else the ``mwga`` logger)."""
        if self.warn is not None:
            self.warn(message)
        else:
            log.warning(f"warning: {message}")

    @staticmethod
    def _read(
        folder: Path, stage: str, key: str, expect: Mapping[str, Sequence[int | None]], mmap: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise DamagedEntryError(f"its manifest cannot be read ({error})") from None
        if not isinstance(manifest, dict) or (manifest.get("stage"), manifest.get("key")) != (stage, key):
            raise DamagedEntryError("its manifest names another stage or key")
        listed = manifest.get("arrays")
        if not isinstance(listed, dict) or not set(expect) <= set(listed):
            raise DamagedEntryError(f"its manifest lists arrays {listed!r}, expected {sorted(expect)}")
        arrays = {}
        for name, spec in listed.items():
            if not isinstance(spec, dict):
                raise DamagedEntryError(f"its manifest's entry for {name!r} is not an object")
            try:
                array = np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                raise DamagedEntryError(f"{name}.npy cannot be read ({error})") from None
            if list(array.shape) != spec.get("shape") or str(array.dtype) != spec.get("dtype"):
                raise DamagedEntryError(
                    f"{name}.npy has shape {list(array.shape)} {array.dtype}, "
                    f"its manifest says {spec.get('shape')} {spec.get('dtype')}"
                )
            # a valid array with altered values passes every check above: only its checksum tells
            if file_checksum(folder / f"{name}.npy") != spec.get("checksum"):
                raise DamagedEntryError(f"{name}.npy does not match the checksum in its manifest")
            wanted = expect.get(name)
            if wanted is not None and (
                len(wanted) != array.ndim
                or any(w is not None and w != s for w, s in zip(wanted, array.shape, strict=True))
            ):
                raise DamagedEntryError(f"{name}.npy has shape {list(array.shape)}, expected {list(wanted)}")
            arrays[name] = array
        return arrays, manifest.get("meta") or {}


def stage_cache_from_config(cfg: Any, ctx: Any) -> StageCache:
    """The run's stage cache in ``ctx.cache_dir`` (``cache.dir``), on when ``cache.enabled`` is true.

    Its warnings go to the ``mwga`` logger, so under Hydra they also land in the run's ``mwga.log``.
    A run starts here, so this also forgets the "cannot write" warnings of an earlier run in the process.
    """
    _unwritable_warned.clear()
    return StageCache(Path(ctx.cache_dir), enabled=bool(cfg.cache.enabled), seed=int(ctx.seed))
