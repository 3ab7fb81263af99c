"""Taken names: a third-party plugin reusing a built-in's name or a config file's option is dropped whole.

Each case is a real third-party distribution written to disk (a module plus a ``.dist-info`` with its
``mwga`` entry point), found through ``sys.path`` in process and through ``PYTHONPATH`` by the ``mwga``
console script, exactly as a pip-installed package is found.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mwga_core.api.errors import PluginLoadError, UnknownComponentError
from mwga_core.plugin_host.host import BLOCK_ENV, STRICT_ENV, PluginHost, config_file_options
from mwga_core.plugin_host.kinds import KINDS

REPO = Path(__file__).resolve().parents[2]
MWGA = Path(sys.executable).with_name("mwga")
#: never tight: it only stops a hung process, and a loaded machine can be 10x slower than a quiet one
GENEROUS_TIMEOUT_S = 3600

#: registers a motion estimator of its own, then the built-in descriptor name `hoof`
COPYCAT_SOURCE = """\
from mwga_core import hookimpl
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor
from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow


@hookimpl
def mwga_register_motion_estimators(register):
    register("copycat_motion", FarnebackFlow, FarnebackConfig)


@hookimpl
def mwga_register_descriptors(register):
    register("hoof", HoofDescriptor, HoofConfig, description="a third party's HOOF")
"""

#: registers a descriptor of its own, then `diffusion_motion`, the option conf/gradient/diffusion_motion.yaml
CONFIG_CLASH_SOURCE = """\
from mwga_core import hookimpl
from mwga_plugins.descriptors.hoof import HoofConfig, HoofDescriptor
from mwga_plugins.gradients.simulated import SimulatedGradientConfig, SimulatedGradient


@hookimpl
def mwga_register_descriptors(register):
    register("clash_descriptor", HoofDescriptor, HoofConfig)


@hookimpl
def mwga_register_gradient_sources(register):
    register("diffusion_motion", SimulatedGradient, SimulatedGradientConfig)
"""


def write_distribution(site: Path, distribution: str, entry_point: str, source: str) -> None:
    """An installed distribution ``<distribution> 1.0`` whose entry point ``entry_point`` is its module."""
    module = distribution.replace("-", "_")
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mwga]\n{entry_point} = {module}\n")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.delenv(BLOCK_ENV, raising=False)


@pytest.fixture
def copycat_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "mwga-copycat", "copycat", COPYCAT_SOURCE)
    return site


@pytest.fixture
def clash_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "mwga-config-clash", "config_clash", CONFIG_CLASH_SOURCE)
    return site


def loaded_host() -> PluginHost:
    host = PluginHost()
    host.load_entry_points()
    return host


# -- in process ------------------------------------------------------------------------------------


def test_third_party_reusing_a_builtin_name_is_dropped_whole(
    copycat_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(copycat_site))
    host = loaded_host()
    record = host.records["copycat"]
    assert (record.status, record.distribution, record.registered) == ("failed", "mwga-copycat", {})
    assert record.error.startswith("DuplicateComponentError: descriptor 'hoof' is already registered")
    assert "'hoof'" in record.error and "'copycat'" in record.error and "comes from mwga " in record.error
    # all or nothing: the motion estimator it registered before the clash is gone too
    assert "copycat_motion" not in host.registry("motion").names()
    # the built-in keeps its name and builds
    assert host.records["hoof"].status == "loaded"
    assert host.registry("descriptor").get("hoof").plugin == "hoof"
    assert host.build("descriptor", {"name": "hoof"}).config.bins == 8


def test_strict_mode_raises_on_the_clash(copycat_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(copycat_site))
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'copycat' from mwga-copycat failed.*'hoof'"):
        loaded_host()


def test_a_name_taken_by_a_config_file_drops_the_plugin(
    clash_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(clash_site))
    host = loaded_host()
    record = host.records["config_clash"]
    assert (record.status, record.registered) == ("failed", {})
    assert record.error.startswith("ConfigNameTakenError: gradient source 'diffusion_motion'")
    assert "diffusion_motion.yaml" in record.error and "gradient=diffusion_motion" in record.error
    assert "clash_descriptor" not in host.registry("descriptor").names()
    assert "diffusion_motion" not in host.registry("gradient").names()


def test_config_file_options_are_the_packaged_yaml_files_of_component_groups() -> None:
    options = config_file_options()
    expected = {
        kind.group: {path.stem for path in (REPO / "conf" / kind.group).glob("*.yaml")}
        for kind in KINDS
        if (REPO / "conf" / kind.group).is_dir()
    }
    assert {group: set(names) for group, names in options.items()} == {g: n for g, n in expected.items() if n}
    assert "diffusion_motion" in options["gradient"]
    assert options["gradient"]["diffusion_motion"].endswith("diffusion_motion.yaml")
    assert "method" not in options and "experiment" not in options  # not component groups


def test_a_blocked_plugin_is_named_when_its_component_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "hoof")
    host = loaded_host()
    with pytest.raises(UnknownComponentError) as raised:
        host.build("descriptor", {"name": "hoof"})
    message = str(raised.value)
    assert "unknown descriptor 'hoof'" in message
    assert "MWGA_BLOCK_PLUGINS=hoof blocks plugin 'hoof' (mwga " in message
    monkeypatch.delenv(BLOCK_ENV)
    unblocked = loaded_host()
    with pytest.raises(UnknownComponentError) as plain:
        unblocked.build("descriptor", {"name": "hof"})
    assert BLOCK_ENV not in str(plain.value)


def test_add_plugin_refuses_a_name_already_added(host: PluginHost) -> None:
    with pytest.raises(ValueError, match="'hoof' is already added"):
        host.add_plugin(object(), "hoof")
    assert host.records["hoof"].status == "loaded"
    assert host.registry("descriptor").get("hoof").plugin == "hoof"


# -- the command line ------------------------------------------------------------------------------


def run_mwga(args: list[str], cwd: Path, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    environment["MWGA_CACHE_DIR"] = str(cwd / "cache")
    if site is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [str(MWGA), *args],
        cwd=cwd,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=GENEROUS_TIMEOUT_S,
    )


def one_results(cwd: Path) -> dict:
    found = sorted(cwd.glob("outputs/*/*/results.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def test_cli_runs_the_builtin_hoof_beside_a_copycat(tmp_path: Path, copycat_site: Path) -> None:
    listing = run_mwga(["plugins", "--json"], tmp_path, copycat_site)
    assert listing.returncode == 0, listing.stderr
    records = {r["name"]: r for r in json.loads(listing.stdout)}
    assert records["copycat"]["status"] == "failed" and "'hoof'" in records["copycat"]["error"]
    assert records["hoof"]["status"] == "loaded"

    composed = run_mwga(["--cfg", "job"], tmp_path, copycat_site)  # the default config uses hoof
    assert composed.returncode == 0, composed.stderr
    assert "name: hoof" in composed.stdout

    run = run_mwga(["method=ours_simulated", "dataset.num_clips=24"], tmp_path, copycat_site)
    assert run.returncode == 0, run.stderr[-3000:]
    warning = " ".join(run.stderr.split())  # the console wraps long lines
    assert "plugin 'copycat' (mwga-copycat 1.0) failed and was skipped" in warning
    assert "descriptor 'hoof' is already registered by plugin 'hoof'" in warning
    assert "Traceback" not in run.stderr
    assert one_results(tmp_path)["config"]["descriptor"]["name"] == "hoof"


def test_cli_help_and_default_config_survive_a_config_name_clash(tmp_path: Path, clash_site: Path) -> None:
    listing = run_mwga(["plugins", "--json"], tmp_path, clash_site)
    assert listing.returncode == 0, listing.stderr
    record = {r["name"]: r for r in json.loads(listing.stdout)}["config_clash"]
    assert record["status"] == "failed" and "diffusion_motion.yaml" in record["error"]

    helped = run_mwga(["--help"], tmp_path, clash_site)
    assert helped.returncode == 0, helped.stderr
    assert "diffusion_motion" in helped.stdout and "clash_descriptor" not in helped.stdout

    composed = run_mwga(["--cfg", "job"], tmp_path, clash_site)  # method=ours picks gradient=diffusion_motion
    assert composed.returncode == 0, composed.stderr
    assert "contrast: reverse_static" in composed.stdout

    run = run_mwga(["method=ours_simulated", "dataset.num_clips=24"], tmp_path, clash_site)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr


def test_cli_names_the_block_when_a_blocked_component_is_asked_for(tmp_path: Path) -> None:
    run = run_mwga(["method=ours_simulated", "dataset.num_clips=24"], tmp_path, MWGA_BLOCK_PLUGINS="hoof")
    assert run.returncode != 0
    message = " ".join(run.stderr.split())
    assert re.search(r"descriptor[/=]hoof", message)  # the missing option, however the error phrases it
    assert "MWGA_BLOCK_PLUGINS=hoof blocks plugin 'hoof' (mwga " in message
    assert "Traceback" not in run.stderr


@pytest.mark.slow  # trains the default real-gradient model, on small settings
def test_plain_mwga_with_a_copycat_installed_exits_0(tmp_path: Path, copycat_site: Path) -> None:
    small = ["dataset.num_clips=24", "model.training.steps=20", "model.training.checkpoints=[10]"]
    run = run_mwga(small, tmp_path, copycat_site)
    assert run.returncode == 0, run.stderr[-3000:]
    results = one_results(tmp_path)
    assert (results["method"], results["config"]["descriptor"]["name"]) == ("ours", "hoof")
