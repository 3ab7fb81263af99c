"""``mwga cache info|clear``: what the cache folder holds, and removing it (all, one stage, or old entries).

The cache folder is ``--dir``, else ``$MWGA_CACHE_DIR``, else ``~/.cache/mwga`` (``cache.dir``'s default).
It holds the stage cache (``stages/<stage>/<key>/``, :mod:`mwga_core.storage.stage_cache`, the projected
features included: ``stages/features/``), trained models (``models/<key>/``) and whatever other folders
mwga keeps there; each folder (or file) directly inside one of them is one *entry*. Hidden names are not
entries: writers' temporary folders (``.tmp-*``, removed by ``clear`` once an hour old), the features
being filled (``.partial-<key>``, resumable; removed by ``clear`` when no run holds their lock) and the
entries' lock files (``.<key>.lock``, removed by ``clear`` when free and their entry is gone).

A file where one of mwga's folders should be (``stages``, ``stages/<stage>``, ``models``) is an entry of
its own, which ``clear`` removes (a run that meets one warns and runs without storing). A ``--dir`` that
is a file is refused: it is not a cache, and mwga does not delete a file it did not make there. ``clear``
reports what it really removed: an entry is renamed aside before it is deleted, so in a read-only cache
it stays whole and is listed as not deleted, and the bytes it reports freed are bytes that are gone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from mwga_core.api.errors import ConfigValueError, MwgaUserError
from mwga_core.config.schema import default_cache_dir
from mwga_core.storage.atomic import LOCK_SUFFIX, lock_is_free, remove_free_lock
from mwga_core.storage.stage_cache import OTHER_CACHES, STAGES

#: temporary folders of writers that died are removed by ``clear`` once they are this old
STALE_TEMP_SECONDS = 3600


@dataclass
class Entry:
    """One cache entry: its folder, size in bytes and the time its newest file was written."""

    path: Path
    bytes: int
    modified: float


@dataclass
class CacheSummary:
    """The entries of one stage (or other cache folder)."""

    name: str
    folder: str
    entries: int
    bytes: int
    oldest: str | None
    newest: str | None


def _measure(path: Path) -> Entry:
    if path.is_file():
        stat = path.stat()
        return Entry(path, stat.st_size, stat.st_mtime)
    size, newest = 0, path.stat().st_mtime
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = (Path(folder) / name).stat()
            except OSError:  # removed meanwhile by a concurrent writer
                continue
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return Entry(path, size, newest)


def cache_folders(root: Path) -> dict[str, Path]:
    """``name -> folder`` of every cache: each stage of the stage cache, then the other top-level folders."""
    folders = {stage: root / "stages" / stage for stage in STAGES}
    stages = root / "stages"
    if stages.exists() and not stages.is_dir():  # a file where the stage cache's folder should be
        folders["stages"] = stages
    if stages.is_dir():
        for extra in sorted(p for p in stages.iterdir() if p.is_dir() and p.name not in folders):
            folders[extra.name] = extra
    folders.update({name: root / name for name in OTHER_CACHES})
    if root.is_dir():
        for other in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "stages"):
            # e.g. the top-level features/ of mwga versions before the features stage
            folders.setdefault(other.name if other.name not in STAGES else f"{other.name} (top level)", other)
    return folders


def entries(folder: Path, include_temp: bool = False) -> list[Entry]:
    """The entries of one cache folder (hidden names are writers' temporary folders)."""
    if not folder.is_dir():
        return []
    return [
        _measure(path) for path in sorted(folder.iterdir()) if include_temp or not path.name.startswith(".")
    ]


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def summarise(root: Path) -> list[CacheSummary]:
    """One summary per cache folder (stages first), empty ones included for the stages."""
    summaries = []
    for name, folder in cache_folders(root).items():
        found = [_measure(folder)] if folder.is_file() else entries(folder)
        times = [e.modified for e in found]
        summaries.append(
            CacheSummary(
                name=name,
                folder=str(folder),
                entries=len(found),
                bytes=sum(e.bytes for e in found),
                oldest=_iso(min(times)) if times else None,
                newest=_iso(max(times)) if times else None,
            )
        )
    return summaries


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _hidden_removable(path: Path, entry: Entry) -> bool:
    """Whether ``clear`` may remove a hidden (non-entry) item: nobody is writing it."""
    if path.name.startswith(".partial-"):  # resumable features: in use exactly while locked
        return lock_is_free(path.with_name(path.name.removeprefix(".partial-")))
    return entry.modified <= time.time() - STALE_TEMP_SECONDS  # a writer may still be filling it


def _remove(entry: Entry) -> tuple[int, Path | None]:
    """Delete an entry. Returns the bytes really freed and what is left of it (None when it is gone).

    A folder is renamed aside (``.trash-<name>-<random>``) first: where that fails (a read-only cache)
    nothing is deleted and the entry stays whole, rather than half-deleted and taken for a damaged one by
    the next run; what cannot be deleted after the rename stays under the hidden name.
    """
    path = entry.path
    if not (path.is_dir() and not path.is_symlink()):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            return 0, path
        return entry.bytes, None
    aside = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except OSError:
        return 0, path
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        return max(entry.bytes - _measure(aside).bytes, 0), aside
    return entry.bytes, None


def clear(root: Path, stage: str | None = None, older_than_days: float | None = None) -> dict[str, dict]:
    """Remove the entries of every cache (or of ``stage``), or only those older than the given days.

    Stale temporary folders of writers that died (older than an hour), features being filled that no
    run holds, and free lock files of removed entries go too; a file where a cache folder should be is
    removed as one entry. Returns ``name -> {"entries": n, "bytes": b, "failed": [paths]}`` of what was
    removed (``bytes``: freed for real; ``failed``: what could not be deleted, e.g. in a read-only cache).

    Raises:
        MwgaUserError: ``root`` is a file.
    """
    refuse_a_file(root)
    refuse_a_foreign_folder(root)
    folders = cache_folders(root)
    if stage is not None:
        if stage not in folders:
            raise ConfigValueError("--stage", stage, f"one of {sorted(folders)}")
        folders = {stage: folders[stage]}
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    freed: dict[str, dict] = {}
    for name, folder in folders.items():
        removed: dict = {"entries": 0, "bytes": 0, "failed": []}
        found = [_measure(folder)] if folder.is_file() else entries(folder, include_temp=True)
        for entry in found:
            hidden = entry.path.name.startswith(".")
            if entry.path.name.endswith(LOCK_SUFFIX):
                continue  # after the entries, below
            if hidden and not _hidden_removable(entry.path, entry):
                continue
            if cutoff is not None and entry.modified >= cutoff:
                continue
            freed_bytes, left = _remove(entry)
            removed["bytes"] += freed_bytes
            if left is not None:
                removed["failed"].append(str(left))
                continue
            removed["entries"] += 0 if hidden else 1
        for lock_file in folder.glob(f".*{LOCK_SUFFIX}") if folder.is_dir() else []:
            guarded = lock_file.with_name(lock_file.name[1 : -len(LOCK_SUFFIX)])
            if not guarded.exists() and not guarded.with_name(f".partial-{guarded.name}").exists():
                remove_free_lock(guarded)
        freed[name] = removed
    return freed


def refuse_a_foreign_folder(root: Path) -> None:
    """``mwga cache clear --dir X`` deletes inside X: refuse an X that holds anything mwga did not write
    there (its top level holds only ``stages``, the other caches' folders and hidden temporary files)."""
    if not root.is_dir():
        return
    known = {"stages", "features", *OTHER_CACHES}  # features: the top-level store of older versions
    foreign = sorted(p.name for p in root.iterdir() if p.name not in known and not p.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise MwgaUserError(
            f"{root} is not an mwga cache folder (it holds {shown}): `mwga cache clear` deletes nothing "
            "there. Point --dir or MWGA_CACHE_DIR (cache.dir) at the cache folder."
        )


def refuse_a_file(root: Path) -> None:
    """Raise a one-line error when the cache folder ``root`` is a file (neither listed nor deleted)."""
    if root.exists() and not root.is_dir():
        raise MwgaUserError(
            f"{root} is a file, not a cache folder: `mwga cache` neither lists nor deletes it; "
            "point --dir or MWGA_CACHE_DIR (cache.dir) at the cache folder, or move the file away"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga cache",
        description="Inspect or clear mwga's cache folder (stage outputs, features, models).",
    )
    parser.add_argument("action", choices=("info", "clear"), nargs="?", default="info")
    parser.add_argument(
        "--dir", type=Path, default=None, help="the cache folder ($MWGA_CACHE_DIR or ~/.cache/mwga)"
    )
    parser.add_argument(
        "--stage", default=None, help="only this stage or cache folder (flows, features, models, ...)"
    )
    parser.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="only entries older than DAYS"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def cache_command(args: list[str]) -> int:
    """``mwga cache [info|clear] [--stage NAME] [--older-than DAYS] [--dir PATH] [--json]``.

    ``clear`` exits 1 when something could not be deleted (listed), also with ``--json``.
    """
    from rich.table import Table

    from mwga_core.reporting.run_outputs import table_console

    options = _parser().parse_args(args)
    root = (options.dir or default_cache_dir()).expanduser()
    if options.older_than is not None and options.older_than < 0:
        raise ConfigValueError("--older-than", options.older_than, "a number of days >= 0")
    console = table_console()
    if options.action == "clear":
        freed = clear(root, options.stage, options.older_than)
        total = sum(f["bytes"] for f in freed.values())
        failed = [path for f in freed.values() for path in f["failed"]]
        if options.json:
            print(json.dumps({"dir": str(root), "freed": freed, "total_bytes": total}, indent=2))
            return 1 if failed else 0
        for name, removed in freed.items():
            if removed["entries"] or removed["bytes"]:
                console.print(
                    f"{name}: removed {removed['entries']} entries, {human_bytes(removed['bytes'])}"
                )
        count = sum(f["entries"] for f in freed.values())
        console.print(f"freed {human_bytes(total)} ({count} entries) in {root}", highlight=False)
        if failed:
            console.print(
                f"[yellow]warning:[/] could not delete {len(failed)} entries (permissions?): "
                + ", ".join(failed[:3])
                + (" ..." if len(failed) > 3 else ""),
                highlight=False,
            )
            return 1
        return 0
    refuse_a_file(root)
    summaries = summarise(root)
    if options.stage is not None:
        summaries = [s for s in summaries if s.name == options.stage]
        if not summaries:
            raise ConfigValueError("--stage", options.stage, f"one of {sorted(cache_folders(root))}")
    if options.json:
        data = {
            "dir": str(root),
            "caches": [asdict(s) for s in summaries],
            "total_bytes": sum(s.bytes for s in summaries),
        }
        print(json.dumps(data, indent=2))
        return 0
    table = Table(title=f"mwga cache: {root}", title_justify="left")
    for column, justify in (
        ("cache", "left"),
        ("entries", "right"),
        ("size", "right"),
        ("oldest", "left"),
        ("newest", "left"),
    ):
        table.add_column(column, justify=justify)
    for s in summaries:
        table.add_row(s.name, str(s.entries), human_bytes(s.bytes), s.oldest or "-", s.newest or "-")
    table.add_section()
    table.add_row(
        "total", str(sum(s.entries for s in summaries)), human_bytes(sum(s.bytes for s in summaries)), "", ""
    )
    console.print(table)
    return 0
