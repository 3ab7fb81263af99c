"""The one way mwga writes files and takes locks, for every store (stage cache, model store, index).

Atomic writes: a file is written under a temporary name in its own folder and moved onto its final name
with :func:`os.replace`, so a reader (or a run killed mid-write) only ever sees the old file or the whole
new one, never a partial file. There is no fsync: the guarantee is against crashes of mwga, not of the
machine. Temporary names start with ``.`` and end in ``.tmp`` (``mwga cache clear`` removes stale ones).

Locks: :func:`entry_lock` is an inter-process lock (:mod:`filelock`) on a hidden ``.<name>.lock`` file
beside the path it guards. Lock files stay behind after release (deleting one while another process
waits on it would let two processes in at once); they are a few bytes each.

Deleting: :func:`discard_folder` renames a folder aside before deleting it, so a reader never sees it
half-deleted, and a folder that cannot be renamed (a read-only parent) is left whole.
:func:`why_not_writable` turns the :class:`OSError` of a failed write into words (a file where a folder
should be, a read-only folder), for the warnings of the stores built on this module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

#: suffix of lock files (``.<name>.lock``)
LOCK_SUFFIX = ".lock"


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so :func:`os.replace` is a rename)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` atomically (``default=str`` for paths and the like)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=str)
    write_bytes_atomic(path, text.encode())


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file to ``path`` atomically (never pickled)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def lock_path(path: Path) -> Path:
    """The lock file that guards ``path``: ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


@contextmanager
def entry_lock(path: Path, timeout: float = -1, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the inter-process lock of ``path`` (a file or folder, which need not exist) for the block.

    Args:
        path: what the lock guards; the lock file is :func:`lock_path` of it (its folder is created).
        timeout: seconds to wait, -1 (default) to wait as long as it takes; on expiry
            :class:`filelock.Timeout` is raised.
        on_wait: called once when another process holds the lock, before waiting for it (to say why
            the run pauses).

    The lock is not reentrant across calls: do not take the same path's lock twice in one block.
    """
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def lock_is_free(path: Path) -> bool:
    """Whether no process holds the lock of ``path`` right now (True when it has no lock file)."""
    lock_file = lock_path(path)
    if not lock_file.exists():
        return True
    try:
        with FileLock(lock_file, timeout=0):
            return True
    except Timeout:
        return False


def remove_free_lock(path: Path) -> bool:
    """Delete the lock file of ``path`` if no process holds it (for ``mwga cache clear``).

    Only for locks whose entry is gone: a process that opened the file just before the deletion would
    lock the deleted file, so never remove the lock of something a run may still write.
    """
    lock_file = lock_path(path)
    try:
        with FileLock(lock_file, timeout=0):
            lock_file.unlink(missing_ok=True)
        return True
    except (Timeout, OSError):
        return False


def discard_folder(folder: Path) -> bool:
    """Delete a folder: renamed aside first (``.trash-<name>-<random>``), so a reader never sees it
    half-deleted. Returns False, deleting nothing, when it cannot be renamed (e.g. a read-only parent)."""
    folder = Path(folder)
    aside = folder.parent / f".trash-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, aside)
    except OSError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


#: errors of writing into a folder one may not write to
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
#: errors of writing under a path where a file is in the way of a folder
_NOT_A_FOLDER = (errno.EEXIST, errno.ENOTDIR)


def blocking_file(path: Path) -> Path | None:
    """The file (not folder) at ``path`` or at one of its parents, which keeps a folder from being made
    there; None when there is none."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def why_not_writable(path: Path, error: OSError) -> str:
    """Why writing ``path`` failed with ``error``, in words naming the file or folder at fault.

    ``"<p> is a file where a folder should be"``, ``"<folder> is read-only (Permission denied)"``, or the
    error itself.
    """
    attempted = Path(error.filename) if error.filename else Path(path)
    if error.errno in _NOT_A_FOLDER and (blocker := blocking_file(attempted)) is not None:
        return f"{blocker} is a file where a folder should be"
    if error.errno in _READ_ONLY:
        existing = next(
            (p for p in (attempted, *attempted.parents) if p.exists() or p.is_symlink()), attempted
        )
        return f"{existing} is read-only ({os.strerror(error.errno)})"
    return f"{attempted}: {error.strerror or error}"
