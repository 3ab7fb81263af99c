"""Damaged, blocked and read-only caches, from the outside: `mwga` in a subprocess on real cache folders.

A cache only saves time, so none of these may stop a run or change its results: a damaged model-store
entry is reported (file and reason), removed and retrained; a file where a cache folder should be and a
read-only cache give one warning and a run that stores nothing; a fully cached run on a read-only cache
just reads. `mwga cache clear` removes what it can and never claims bytes it did not free.

Read-only folders as root (CI runs as root, for whom chmod is no barrier): the subprocess drops the
capability that lets root write anywhere (CAP_DAC_OVERRIDE, from its bounding set before exec), so the
folder's mode bits hold for it as for anyone; each test first checks with a probe that the folder really
refuses a write. An in-process test injects EROFS at the syscalls for machines where neither works.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mwga_core.storage.model_store import SIDECAR, ModelStore, checkpoint_name

#: a subprocess is only stopped when it hangs, never because the machine is busy
HUNG_S = 3600
SMALL = ["method=ours_simulated", "dataset.num_clips=60", "dataset.queries_per_pattern=1"]
#: the real gradient source with a model trained in a few steps (see tests/core/test_model_stage.py)
TINY_MODEL = [
    "gradient=diffusion",
    "dataset.num_clips=24",
    "dataset.num_frames=5",
    "dataset.size=16",
    "model.channels=8",
    "model.blocks=1",
    "model.diffusion_steps=100",
    "model.training.steps=4",
    "model.training.checkpoints=[]",
    "gradient.timesteps=[30]",
]
CANNOT_WRITE = "warning: cannot write to the cache:"
CAP_DAC_OVERRIDE = 1
PR_CAPBSET_DROP = 24


def _drop_root_write_override() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def run(args: list[str], cwd: Path, cache: Path, *, as_user: bool = False) -> subprocess.CompletedProcess:
    """``mwga <args>`` with ``MWGA_CACHE_DIR=cache``; ``as_user``: as root, without root's write override."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")} | {"MWGA_CACHE_DIR": str(cache)}
    preexec = _drop_root_write_override if as_user and os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HUNG_S,
        preexec_fn=preexec,
    )


def run_job(args: list[str], out: Path, cache: Path, *, as_user: bool = False) -> subprocess.CompletedProcess:
    """An attribution run writing into ``out``; asserts it exits 0 without a traceback."""
    done = run([*args, f"hydra.run.dir={out}"], out.parent, cache, as_user=as_user)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def results(out: Path) -> bytes:
    return (out / "results.json").read_bytes()


def warnings(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("warning:")]


def set_writable(root: Path, writable: bool) -> None:
    """chmod a whole tree read-only (a-w) or back (u+w)."""
    for folder, _, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / f for f in files)]:
            mode = path.stat().st_mode
            path.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``read_only(folder)`` makes a cache folder read-only for :func:`run` ``(as_user=True)``; skips where
    nothing can make it so. The folders are made writable again afterwards (for tmp_path's cleanup)."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        set_writable(folder, False)
        made.append(folder)
        try:
            probe = subprocess.run(
                [sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
                capture_output=True,
                preexec_fn=_drop_root_write_override if os.geteuid() == 0 else None,
            )
        except subprocess.SubprocessError:  # prctl refused: root without CAP_SETPCAP
            pytest.skip("cannot drop root's write override here")
        if probe.returncode == 0:
            (folder / "probe").unlink()
            pytest.skip("cannot make a folder read-only here (root without CAP_SETPCAP)")

    yield make
    for folder in made:
        set_writable(folder, True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, Path]]:
    """Normal runs of SMALL and TINY_MODEL: their results.json and the cache they filled."""
    base = tmp_path_factory.mktemp("reference")
    found = {}
    for name, args in (("small", SMALL), ("model", TINY_MODEL)):
        cache = base / f"cache-{name}"
        run_job(args, base / name, cache)
        found[name] = (results(base / name), cache)
    return found


def copy_cache(reference_cache: Path, to: Path) -> Path:
    shutil.copytree(reference_cache, to)
    return to


def model_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "models").iterdir() if p.is_dir()]
    return entry


# -- a damaged model-store entry ------------------------------------------------------------------------


def _truncate(entry: Path) -> str:
    checkpoint = next(entry.glob("*.safetensors"))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    return checkpoint.name


def _alter(entry: Path) -> str:
    checkpoint = next(entry.glob("*.safetensors"))
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF  # a weight's last byte: still a valid safetensors file of the same size
    checkpoint.write_bytes(bytes(data))
    return checkpoint.name


def _remove_checkpoint(entry: Path) -> str:
    checkpoint = next(entry.glob("*.safetensors"))
    checkpoint.unlink()
    return checkpoint.name


def _garbage_sidecar(entry: Path) -> str:
    (entry / SIDECAR).write_bytes(b"\x00{garbage")
    return SIDECAR


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "truncated"),
        (_alter, "does not match the checksum"),
        (_remove_checkpoint, "is missing"),
        (_garbage_sidecar, "cannot be read"),
    ],
    ids=["truncated checkpoint", "altered checkpoint", "missing checkpoint", "garbage model.json"],
)
def test_a_damaged_model_entry_is_retrained_with_a_warning_naming_it(
    tmp_path: Path, reference: dict, damage: Callable[[Path], str], reason: str
) -> None:
    expected, reference_cache = reference["model"]
    cache = copy_cache(reference_cache, tmp_path / "cache")
    entry = model_entry(cache)
    damaged_file = damage(entry)

    done = run_job(TINY_MODEL, tmp_path / "repaired", cache)
    (warning,) = warnings(done)
    assert f"ignoring the damaged model entry {entry}" in warning and damaged_file in warning
    assert reason in warning and "training the model again" in warning
    assert results(tmp_path / "repaired") == expected  # retrained: the same model as a fresh run
    # the entry is whole again: the next run reads it
    again = run_job(TINY_MODEL, tmp_path / "again", cache)
    assert warnings(again) == [] and "model: cached" in again.stderr
    assert results(tmp_path / "again") == expected


def test_model_json_lists_each_checkpoint_size_and_checksum(reference: dict) -> None:
    entry = model_entry(reference["model"][1])
    files = json.loads((entry / SIDECAR).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in entry.glob("*.safetensors"))
    for name, spec in files.items():
        assert spec["bytes"] == (entry / name).stat().st_size and len(spec["checksum"]) == 32


def test_an_entry_from_before_checksums_is_read_when_whole_and_refused_when_truncated(tmp_path: Path) -> None:
    store, said = ModelStore(tmp_path), []
    store.warn = said.append
    weights = {"w": torch.arange(1000, dtype=torch.float32)}
    store.save_checkpoint("k", 4, weights)
    store.finish("k", {"key": "k", "checkpoint_steps": [4]})
    sidecar = store.folder("k") / SIDECAR
    sidecar.write_text(json.dumps({"key": "k", "checkpoint_steps": [4]}))  # no "files": an older entry
    model = store.read("k", None, (2, 4, 4, 1), 1, [4])
    assert model is not None and said == []
    torch.testing.assert_close(model.weights(4)["w"], weights["w"])

    checkpoint = store.folder("k") / checkpoint_name(4)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    assert store.read("k", None, (2, 4, 4, 1), 1, [4]) is None
    assert len(said) == 1 and "is not a whole safetensors file" in said[0]
    assert not store.folder("k").exists()  # removed, so the caller trains it again


# -- a file where a cache folder should be --------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocked", "args"),
    [(".", SMALL), ("stages", SMALL), ("stages/flows", SMALL), ("models", TINY_MODEL)],
    ids=["cache.dir", "stages", "stages-flows", "models"],
)
def test_a_file_where_a_cache_folder_should_be_warns_once_and_runs_uncached(
    tmp_path: Path, reference: dict, blocked: str, args: list[str]
) -> None:
    cache = tmp_path / "cache"
    in_the_way = (cache / blocked).resolve() if blocked != "." else cache
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("a file, not a folder")

    done = run_job(args, tmp_path / "out", cache)
    (warning,) = warnings(done)
    assert warning.startswith(CANNOT_WRITE)
    assert f"{in_the_way} is a file where a folder should be" in warning
    assert results(tmp_path / "out") == reference["small" if args is SMALL else "model"][0]
    assert in_the_way.read_text() == "a file, not a folder"  # never deleted by a run

    cleared = run(["cache", "clear"], tmp_path, cache)
    if blocked == ".":  # not a cache: `mwga cache` refuses it in one line and leaves it alone
        assert cleared.returncode == 2 and "Traceback" not in cleared.stderr
        assert f"error: {cache} is a file, not a cache folder" in " ".join(cleared.stderr.split())
        assert in_the_way.read_text() == "a file, not a folder"
        return
    assert cleared.returncode == 0, cleared.stderr
    assert not in_the_way.exists()  # `mwga cache clear` removed it: the next run caches again
    again = run_job(args, tmp_path / "again", cache)
    assert warnings(again) == []
    assert run_job(args, tmp_path / "cached", cache).stderr.count("computed") == 0


# -- a read-only cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "model"])
def test_a_fully_cached_run_works_in_a_read_only_cache(
    tmp_path: Path, reference: dict, read_only: Callable, name: str
) -> None:
    expected, reference_cache = reference[name]
    cache = copy_cache(reference_cache, tmp_path / "cache")
    read_only(cache)
    done = run_job(SMALL if name == "small" else TINY_MODEL, tmp_path / "out", cache, as_user=True)
    assert warnings(done) == []  # nothing needed writing
    assert "computed" not in done.stderr and "trained" not in done.stderr
    assert results(tmp_path / "out") == expected


@pytest.mark.parametrize("name", ["small", "model"])
def test_an_uncached_run_in_a_read_only_cache_computes_with_one_warning(
    tmp_path: Path, reference: dict, read_only: Callable, name: str
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache)
    done = run_job(SMALL if name == "small" else TINY_MODEL, tmp_path / "out", cache, as_user=True)
    (warning,) = warnings(done)  # one, though the stage cache and the model store both failed to write
    assert warning.startswith(CANNOT_WRITE) and f"{cache} is read-only" in warning
    assert results(tmp_path / "out") == reference[name][0]
    assert list(cache.iterdir()) == []


def test_clear_of_a_read_only_cache_deletes_nothing_and_claims_nothing(
    tmp_path: Path, reference: dict, read_only: Callable
) -> None:
    cache = copy_cache(reference["small"][1], tmp_path / "cache")
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    read_only(cache / "stages")
    cleared = run(["cache", "clear", "--json"], tmp_path, cache, as_user=True)
    assert cleared.returncode == 1 and "Traceback" not in cleared.stderr
    report = json.loads(cleared.stdout)
    assert report["total_bytes"] == 0
    assert sum(f["entries"] for f in report["freed"].values()) == 0
    assert sum(len(f["failed"]) for f in report["freed"].values()) > 0
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before  # whole, not half-deleted
    assert "computed" not in run_job(SMALL, tmp_path / "out", cache, as_user=True).stderr


# -- the same without privileges: EROFS injected in process ---------------------------------------------


def _erofs_under(roots: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write under ``roots`` fail with EROFS, as on a read-only file system."""
    prefixes = tuple(str(root) for root in roots)

    def refuse(path: object) -> None:
        if os.path.abspath(os.fspath(path)).startswith(prefixes):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    real_rename, real_replace = os.rename, os.replace

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        refuse(src)
        refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        refuse(src)
        refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    for target, name, value in [
        (io, "open", open_),
        (builtins, "open", open_),
        (os, "open", os_open),
        (os, "mkdir", mkdir),
        (os, "rename", rename),
        (os, "replace", replace),
    ]:
        monkeypatch.setattr(target, name, value)


def test_runs_on_a_read_only_file_system_read_what_is_there_and_store_nothing(
    tmp_path: Path, compose_config, ctx, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mwga_core.pipeline.run import run_attribution

    cfg = compose_config(*SMALL)
    expected = run_attribution(cfg, ctx).scores  # fills ctx.cache_dir
    filled_cache, empty_cache = ctx.cache_dir, tmp_path / "empty-cache"
    filled = sorted(filled_cache.rglob("*"))
    empty_cache.mkdir()
    _erofs_under([filled_cache, empty_cache], monkeypatch)

    cached = run_attribution(cfg, ctx)  # fully cached: reads only
    assert [r.message for r in caplog.records if "warning" in r.message] == []
    np.testing.assert_array_equal(cached.scores, expected)

    ctx.cache_dir = empty_cache
    computed = run_attribution(cfg, ctx)
    said = [r.message for r in caplog.records if r.message.startswith(CANNOT_WRITE)]
    assert len(said) == 1 and "is read-only (Read-only file system)" in said[0]
    np.testing.assert_array_equal(computed.scores, expected)
    monkeypatch.undo()
    assert sorted(ctx.cache_dir.rglob("*")) == [] and sorted(filled_cache.rglob("*")) == filled
