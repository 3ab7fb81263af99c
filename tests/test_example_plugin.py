"""The example third-party plugin (examples/mwga-divergence-curl), installed for real with pip.

A throwaway virtual environment sees this environment's packages (mwga included) and gets the example
installed into it, exactly as a user would install a plugin. Then ``mwga plugins --json`` must list it,
``mwga descriptor=divergence_curl`` must run with its Hydra option (stored in the ConfigStore, no YAML),
and the example's own tests (mwga's contract kit) must pass inside that environment.

``python -m mwga_core.cli.main`` stands in for the ``mwga`` console script, which lives in this environment's
bin folder rather than the throwaway one; it calls the same ``main()``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mwga-divergence-curl"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A venv with the example installed; the example is copied first so the repo stays clean."""
    base = tmp_path_factory.mktemp("example-plugin")
    source = base / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    python = _venv_python(venv)
    if sys.prefix != sys.base_prefix:
        # Running inside a venv: --system-site-packages would expose the base interpreter's packages,
        # not this environment's, so point the new venv at ours explicitly.
        venv_site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
        (Path(venv_site) / "_mwga_parent_env.pth").write_text(lines)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MWGA_")}
    env.update(CI="1", MWGA_CACHE_DIR=str(base / "cache"))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return {"python": python, "source": source, "env": env, "base": base}


def _mwga(plugin_env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(plugin_env["python"]), "-m", "mwga_core.cli.main", *args],
        capture_output=True,
        text=True,
        env=plugin_env["env"],
        cwd=cwd,
        timeout=3600,  # only against a hang: never tight, loaded machines are slow
    )


def _results(run_dir: Path) -> dict:
    found = sorted(run_dir.glob("outputs/*/*/results.json"))
    assert len(found) == 1, f"expected one results.json under {run_dir}/outputs, found {found}"
    return json.loads(found[0].read_text())


@pytest.mark.slow
def test_installed_example_is_listed_as_loaded(plugin_env: dict) -> None:
    listed = _mwga(plugin_env, "plugins", "--json", cwd=plugin_env["base"] / "list")
    assert listed.returncode == 0, listed.stderr
    records = {record["name"]: record for record in json.loads(listed.stdout)}
    record = records["divergence_curl"]
    assert record["status"] == "loaded", record["error"]
    assert record["distribution"] == "mwga-divergence-curl"
    assert record["version"] == "0.1.0"
    assert record["registered"] == {"descriptor": ["divergence_curl"]}
    assert records["hoof"]["status"] == "loaded"  # the built-ins are still there


@pytest.mark.slow
def test_run_with_the_example_descriptor(plugin_env: dict) -> None:
    run_dir = plugin_env["base"] / "run"
    run = _mwga(
        plugin_env, "method=ours_simulated", "descriptor=divergence_curl", "dataset.num_clips=30", cwd=run_dir
    )
    assert run.returncode == 0, run.stderr
    results = _results(run_dir)
    assert results["config"]["descriptor"] == {
        "name": "divergence_curl",
        "include_translation": True,
        "include_shear": True,
        "scale_to_edge": True,
    }
    assert results["corpus"]["num_train"] == 30
    # The affine fit separates every pattern but `random` on this corpus (NDCG@20 0.84 when written).
    assert results["metrics"]["mean"]["NDCG@20"] > 0.5


@pytest.mark.slow
def test_example_config_fields_are_hydra_overrides(plugin_env: dict) -> None:
    run_dir = plugin_env["base"] / "override"
    args = [
        "method=ours_simulated",
        "descriptor=divergence_curl",
        "descriptor.include_translation=false",
        "dataset.num_clips=30",
    ]
    run = _mwga(plugin_env, *args, cwd=run_dir)
    assert run.returncode == 0, run.stderr
    assert _results(run_dir)["config"]["descriptor"]["include_translation"] is False

    typo = _mwga(plugin_env, "descriptor=divergence_curl", "descriptor.include_translatio=false", cwd=run_dir)
    assert typo.returncode != 0
    assert "include_translatio" in typo.stderr + typo.stdout


@pytest.mark.slow
def test_example_own_tests_pass(plugin_env: dict) -> None:
    tests = plugin_env["source"] / "tests"
    run = subprocess.run(
        [str(plugin_env["python"]), "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        env=plugin_env["env"],
        cwd=plugin_env["source"],
        timeout=3600,  # only against a hang: never tight, loaded machines are slow
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
