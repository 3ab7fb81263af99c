"""Packaging: the folder-to-package mapping, entry points of the built-ins, and a plain wheel install."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder
ENTRY_POINTS = PYPROJECT["project"]["entry-points"]["mwga"]
FOLDER_TO_IMPORT = {folder: name for name, folder in PACKAGE_DIRS.items()}
SKIPPED = {"__pycache__"}


def import_name(path: Path) -> str:
    """``plugins/motion/raft.py`` -> ``mwga_plugins.motion.raft``; packages map from their folder."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([FOLDER_TO_IMPORT[parts[0]], *parts[1:]])


def source_files() -> list[Path]:
    files = []
    for folder in FOLDER_TO_IMPORT:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and not SKIPPED & set(path.parts) and path.suffix != ".pyc":
                files.append(path)
    return files


def test_top_level_folders_map_to_unique_import_names() -> None:
    assert PACKAGE_DIRS == {"mwga_core": "mwga_core", "mwga_plugins": "plugins", "mwga_conf": "conf"}
    assert "plugins" not in PACKAGES and "conf" not in PACKAGES


def test_every_package_folder_is_listed() -> None:
    folders = [p.parent for p in source_files() if p.name == "__init__.py"]
    assert folders, "no packages found"
    missing = {import_name(folder / "__init__.py") for folder in folders} - set(PACKAGES)
    assert not missing, f"add these to `packages` in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_exists() -> None:
    existing = {import_name(p) for p in source_files() if p.name == "__init__.py"}
    assert not set(PACKAGES) - existing


def test_every_module_with_a_hook_has_an_entry_point() -> None:
    hooked = {
        import_name(path)
        for path in source_files()
        if path.suffix == ".py"
        and path.parts[len(REPO.parts)] == "plugins"
        and re.search(r"^@hookimpl", path.read_text(), re.MULTILINE)
    }
    assert hooked, "no hook implementations found under plugins/"
    assert not hooked - set(ENTRY_POINTS.values()), "modules with @hookimpl but no entry point"
    for name, module in ENTRY_POINTS.items():
        assert module in hooked, f"entry point {name} = {module} names no module with a hook"
    assert len(set(ENTRY_POINTS.values())) == len(ENTRY_POINTS), "two entry points for one module"


def test_requires_python_is_capped_below_3_14() -> None:
    spec = PYPROJECT["project"]["requires-python"]
    assert "<3.14" in spec.replace(" ", "")


# -- a plain wheel install ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (building in place would litter the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    for folder in FOLDER_TO_IMPORT:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # No build isolation: there is no network here, and the build backend is installed already.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "-o",
            "dist",
            "source",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next((root / "dist").glob("mwga-*.whl"))


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path) -> Path:
    """A venv holding only the wheel, with the dependencies visible but not the editable mwga.

    ``--system-site-packages`` would run the editable install's .pth file, whose import finder falls
    back to the source tree for any module the wheel lacks. Instead, the venv is isolated and a .pth
    file of its own lists the outer site-packages folders as plain paths: paths added that way are not
    site directories, so their .pth files (the editable finder among them) never run.
    """
    venv = wheel.parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=3600)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    outer = dict.fromkeys(
        [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    (Path(purelib) / "_outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        timeout=3600,
    )
    return venv


def venv_run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MWGA_", "PYTHON"))}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


@pytest.mark.slow
def test_wheel_holds_every_source_and_data_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = set()
    for path in source_files():
        relative = path.relative_to(REPO)
        expected.add("/".join([FOLDER_TO_IMPORT[relative.parts[0]], *relative.parts[1:]]))
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(name.startswith(("plugins/", "conf/", "tests/")) for name in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    for name, module in ENTRY_POINTS.items():
        assert f"{name} = {module}" in text


@pytest.mark.slow
def test_wheel_install_runs_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    python, mwga = str(wheel_venv / "bin" / "python"), str(wheel_venv / "bin" / "mwga")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    # Every module the source tree has resolves to the wheel's copy, without importing the heavy ones.
    modules = sorted({import_name(p) for p in source_files() if p.suffix == ".py"})
    probe = (
        "import importlib.util, json, sys\n"
        f"names = {modules!r}\n"
        "print(json.dumps({'finders': [repr(f) for f in sys.meta_path],"
        " 'origins': {n: importlib.util.find_spec(n).origin for n in names}}))\n"
    )
    found = venv_run(wheel_venv, [python, "-c", probe], tmp_path)
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout)
    assert not [f for f in report["finders"] if "Editable" in f], report["finders"]
    outside = {n: o for n, o in report["origins"].items() if not o.startswith(site_packages + os.sep)}
    assert not outside, f"not from the wheel: {outside}"

    # The loaded plugins are the wheel's modules.
    loaded = venv_run(
        wheel_venv,
        [
            python,
            "-c",
            "import json, sys; from mwga_core.plugin_host.host import get_host; "
            "print(json.dumps({r.name: sys.modules[r.module].__file__ "
            "for r in get_host().records.values() if r.status == 'loaded'}))",
        ],
        tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr
    files = json.loads(loaded.stdout)
    for name in ENTRY_POINTS:
        assert files[name].startswith(site_packages + os.sep), (name, files[name])

    listing = venv_run(wheel_venv, [mwga, "plugins", "--json"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    records = {r["name"]: r for r in json.loads(listing.stdout)}
    for name in ENTRY_POINTS:
        assert records[name]["status"] == "loaded" and records[name]["registered"], records[name]

    # the default method's real-gradient recipe is a YAML option (conf/gradient/) that must ship too
    default = venv_run(wheel_venv, [mwga, "--cfg", "job"], tmp_path)
    assert default.returncode == 0, default.stderr[-3000:]
    assert "contrast: reverse_static" in default.stdout and "method_name: ours" in default.stdout
    run = venv_run(wheel_venv, [mwga, "method=ours_simulated", "dataset.num_clips=30"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next(tmp_path.glob("outputs/*/*/results.json")).read_text())
    assert results["corpus"]["num_train"] == 30 and results["method"] == "ours_simulated"
    assert "Mean" in run.stdout
