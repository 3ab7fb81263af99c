"""Plugin loading: failures are recorded and contained, strict and block env vars, hook-name checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as real_entry_points
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mwga_core import hookimpl
from mwga_core.api.errors import PluginLoadError
from mwga_core.plugin_host import host as plugin_host
from mwga_core.plugin_host.host import BLOCK_ENV, STRICT_ENV, PluginHost

REPO = Path(__file__).resolve().parents[2]
BUILTIN_ENTRY_POINTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["mwga"]

#: what each built-in registers (group -> names); newer built-ins are only checked for loading cleanly
EXPECTED_BUILTINS = {
    "synthetic": {"dataset": ["synthetic"]},
    "none_motion": {"motion": ["none"]},
    "farneback": {"motion": ["farneback"]},
    "hoof": {"descriptor": ["hoof"]},
    "appearance": {"descriptor": ["appearance"]},
    "flow_magnitude": {"descriptor": ["flow_magnitude"]},
    "none_gradient": {"gradient": ["none"]},
    "simulated": {"gradient": ["simulated"]},
    "none_projector": {"projection": ["none"]},
    "gaussian": {"projection": ["gaussian"]},
    "cosine": {"scorer": ["cosine"]},
    "random_scorer": {"scorer": ["random"]},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.delenv(BLOCK_ENV, raising=False)


def write_broken_module(folder: Path, module: str) -> None:
    (folder / f"{module}.py").write_text("raise ImportError('boom: a dependency is missing')\n")


def write_broken_distribution(folder: Path) -> None:
    """A distribution `mwga-broken-example 9.9` on disk whose `mwga` entry point fails to import."""
    write_broken_module(folder, "mwga_broken_example")
    info = folder / "mwga_broken_example-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mwga-broken-example\nVersion: 9.9\n")
    (info / "entry_points.txt").write_text("[mwga]\nbroken_example = mwga_broken_example\n")


@pytest.fixture
def with_broken_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The real entry points plus one whose module raises on import; returns its name."""
    write_broken_module(tmp_path, "mwga_test_broken_import")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = EntryPoint(name="broken", value="mwga_test_broken_import", group="mwga")

    def fake_entry_points(group: str):
        return [*real_entry_points(group=group), broken]

    monkeypatch.setattr(plugin_host, "entry_points", fake_entry_points)
    return "broken"


def loaded_host() -> PluginHost:
    host = PluginHost()
    host.load_entry_points()
    return host


def test_builtins_load_cleanly() -> None:
    host = loaded_host()
    for name in BUILTIN_ENTRY_POINTS:
        record = host.records[name]
        assert (record.status, record.error, record.distribution) == ("loaded", None, "mwga"), name
        assert record.registered, f"built-in plugin {name} registered nothing"
    for name, registered in EXPECTED_BUILTINS.items():
        assert host.records[name].registered == registered


def test_import_failure_is_recorded_and_the_rest_loads(with_broken_entry_point: str) -> None:
    host = loaded_host()
    record = host.records[with_broken_entry_point]
    assert record.status == "failed"
    assert record.error == "ImportError: boom: a dependency is missing"
    assert record.registered == {}
    assert host.failures() == [record]
    assert all(host.records[name].status == "loaded" for name in BUILTIN_ENTRY_POINTS)
    assert host.build("descriptor", {"name": "hoof"}).config.bins == 8


def test_import_failure_names_the_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_broken_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    record = loaded_host().records["broken_example"]
    assert (record.status, record.distribution, record.version) == ("failed", "mwga-broken-example", "9.9")
    assert "boom" in record.error


def test_strict_env_raises_on_the_failing_plugin(
    with_broken_entry_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'broken'.*ImportError: boom"):
        loaded_host()


def test_block_env_skips_plugins_by_entry_point_name(
    with_broken_entry_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BLOCK_ENV, f"hoof, {with_broken_entry_point}")
    monkeypatch.setenv(STRICT_ENV, "1")  # a blocked plugin is never imported, so strict mode stays quiet
    host = loaded_host()
    assert host.records["hoof"].status == "blocked"
    assert host.records[with_broken_entry_point].status == "blocked"
    assert host.records[with_broken_entry_point].error is None
    assert "hoof" not in host.registry("descriptor").names()
    assert "appearance" in host.registry("descriptor").names()


def test_block_env_skips_a_whole_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_broken_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(BLOCK_ENV, "mwga-broken-example")
    host = loaded_host()
    assert host.records["broken_example"].status == "blocked"
    assert host.failures() == []


def test_third_party_entry_point_reusing_a_builtin_name_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mwga_other_cosine.py").write_text(
        "from mwga_core import hookimpl\n"
        "from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig\n\n"
        "@hookimpl\n"
        "def mwga_register_scorers(register):\n"
        "    register('other_cosine', CosineScorer, CosineScorerConfig)\n"
    )
    info = tmp_path / "mwga_other_cosine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mwga-other-cosine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mwga]\ncosine = mwga_other_cosine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = loaded_host()
    assert host.records["cosine"].distribution == "mwga"  # the built-in keeps its name
    other = host.records["mwga-other-cosine:cosine"]
    assert (other.status, other.registered) == ("loaded", {"scorer": ["other_cosine"]})
    assert host.registry("scorer").get("other_cosine").plugin == "mwga-other-cosine:cosine"


class MisspelledHook:
    @hookimpl
    def mwga_register_scorers(self, register):
        from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig

        register("misspelled_cosine", CosineScorer, CosineScorerConfig)

    @hookimpl
    def mwga_register_descriptor(self, register):  # singular: not a hook mwga calls
        raise AssertionError("never called")


def test_misspelled_hook_fails_that_plugin_only(host: PluginHost) -> None:
    plugin = MisspelledHook()
    record = host.add_plugin(plugin, "typo")
    assert record.status == "failed"
    assert "mwga_register_descriptor" in record.error and "mwga_register_descriptors" in record.error
    assert "misspelled_cosine" not in host.registry("scorer").names()
    assert not host.manager.is_registered(plugin)  # unregistered again
    assert host.build("scorer", {"name": "cosine"}) is not None


class FailsHalfWay:
    @hookimpl
    def mwga_register_datasets(self, register):
        from mwga_plugins.datasets.synthetic import SyntheticConfig, SyntheticMotionBenchmark

        register("half_dataset", SyntheticMotionBenchmark, SyntheticConfig)

    @hookimpl
    def mwga_register_descriptors(self, register):
        from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor

        register("half_descriptor", HoofDescriptor, HoofConfig)
        raise RuntimeError("second descriptor is broken")


def test_plugin_failing_half_way_keeps_none_of_its_entries(host: PluginHost) -> None:
    record = host.add_plugin(FailsHalfWay(), "half")
    assert record.status == "failed"
    assert record.error == "RuntimeError: second descriptor is broken"
    assert record.registered == {}
    assert "half_dataset" not in host.registry("dataset").names()
    assert "half_descriptor" not in host.registry("descriptor").names()
    assert "hoof" in host.registry("descriptor").names()


def test_add_plugin_in_strict_mode_raises(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginLoadError, match="second descriptor is broken"):
        host.add_plugin(FailsHalfWay(), "half")


class GoodPlugin:
    @hookimpl
    def mwga_register_scorers(self, register):
        from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig

        register("extra_cosine", CosineScorer, CosineScorerConfig, description="a copy")


def test_add_plugin_records_what_it_registered(host: PluginHost) -> None:
    record = host.add_plugin(GoodPlugin(), "good")
    assert (record.status, record.registered) == ("loaded", {"scorer": ["extra_cosine"]})
    assert host.registry("scorer").get("extra_cosine").plugin == "good"


# -- the command line ------------------------------------------------------------------------------


def run_mwga(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (STRICT_ENV, BLOCK_ENV)} | env
    mwga = Path(sys.executable).with_name("mwga")
    return subprocess.run(
        [str(mwga), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=3600
    )


def test_plugins_json_lists_every_builtin_with_its_registrations(tmp_path: Path) -> None:
    done = run_mwga(["plugins", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    records = {r["name"]: r for r in json.loads(done.stdout)}
    for name, module in BUILTIN_ENTRY_POINTS.items():
        record = records[name]
        assert (record["status"], record["module"], record["distribution"]) == ("loaded", module, "mwga")
        assert record["version"] and record["registered"], name
    for name, registered in EXPECTED_BUILTINS.items():
        assert records[name]["registered"] == registered


def test_cli_reports_a_broken_distribution_and_still_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_broken_distribution(site)
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))

    listing = run_mwga(["plugins", "--json"], tmp_path, PYTHONPATH=pythonpath)
    assert listing.returncode == 0, listing.stderr
    broken = {r["name"]: r for r in json.loads(listing.stdout)}["broken_example"]
    assert (broken["status"], broken["distribution"], broken["version"]) == (
        "failed",
        "mwga-broken-example",
        "9.9",
    )

    run = run_mwga(["method=random", "dataset.num_clips=24"], tmp_path, PYTHONPATH=pythonpath)
    assert run.returncode == 0, run.stderr
    assert "broken_example" in run.stderr and "mwga-broken-example 9.9" in run.stderr
    assert "Traceback" not in run.stderr

    strict = run_mwga(["plugins"], tmp_path, PYTHONPATH=pythonpath, MWGA_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "broken_example" in strict.stderr and "mwga-broken-example" in strict.stderr
    assert "Traceback" not in strict.stderr
