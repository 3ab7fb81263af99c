"""The experiment and method presets (conf/experiment/, conf/method/): what each composes to, that the
method stays overridable, and one real preset sweep end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from mwga_core.cli.main import main
from mwga_core.config.schema import register_configs
from mwga_core.plugin_host.host import PluginHost

CONF = Path(__file__).resolve().parent.parent / "conf"

#: preset -> (swept override, its values); every preset runs the paper's method unless told otherwise
PRESETS = {
    "table1_main": (None, None),
    "table2_baselines": ("method", "ours_simulated,random,appearance,flow_magnitude"),
    "table3_bins": ("descriptor.bins", "4,8,16,32"),
    "table4_projection": ("projection.dim", "32,64,128,256,512"),
    "table5_corpus": ("dataset.num_clips", "50,100,200,500"),
}


def compose_with_hydra(host: PluginHost, *overrides: str) -> DictConfig:
    register_configs(host)
    with initialize_config_module("mwga_conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sets_its_sweep(host: PluginHost, preset: str):
    cfg = compose_with_hydra(host, f"+experiment={preset}")
    key, values = PRESETS[preset]
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    assert params == ({key: values} if key else {})
    assert cfg.hydra.mode.name == "MULTIRUN"  # one command, no -m
    assert cfg.experiment_name == preset
    assert OmegaConf.to_container(cfg.hydra.sweep)["dir"].startswith("multirun/${experiment_name}/")
    if preset != "table2_baselines":  # table2's jobs take their gradient from each swept method
        assert cfg.gradient.name == "simulated"
        assert cfg.method_name == "ours_simulated"


@pytest.mark.parametrize("method", ["random", "appearance", "flow_magnitude"])
def test_baselines_preset_keeps_each_methods_pipeline(host: PluginHost, method: str):
    """table2 must not force a gradient on the baselines: each sweep job is its method preset unchanged."""
    in_preset = compose_with_hydra(host, "+experiment=table2_baselines", f"method={method}")
    alone = compose_with_hydra(host, f"method={method}")
    for group in ("motion", "descriptor", "gradient", "projection", "scorer"):
        assert in_preset[group] == alone[group], group
    assert in_preset.method_name == method


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "table2_baselines"])
def test_a_preset_runs_another_method_when_told(host: PluginHost, preset: str):
    """`+experiment=<table> method=ours`: the same sweep with real gradients (one preset per table)."""
    cfg = compose_with_hydra(host, f"+experiment={preset}", "method=ours")
    key, values = PRESETS[preset]
    assert (OmegaConf.to_container(cfg.hydra.sweeper.params) or {}) == ({key: values} if key else {})
    assert cfg.gradient.name == "diffusion"
    assert cfg.gradient.contrast == "reverse_static"
    assert cfg.model.conditional is False  # no label may carry the motion class into the gradient
    assert (cfg.method_name, cfg.experiment_name) == ("ours", preset)


def test_method_presets_set_fields_only_through_the_options_they_pick():
    """A preset that set `scorer.neighbours` itself would make `scorer=dot` fail to compose."""
    for path in sorted((CONF / "method").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        assert set(preset) <= {"defaults", "method_name"}, f"{path.name} sets {sorted(set(preset))}"
        assert all(str(entry).startswith("{'override /") for entry in preset["defaults"]), path.name


def test_the_baselines_table_takes_another_method_list(tmp_path: Path):
    """The swept method list is an ordinary override: the command line's list replaces the preset's."""
    env = {**os.environ, "MWGA_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "mwga_core.cli.main", "+experiment=table2_baselines"]
    command += ["method=random,appearance", "dataset.num_clips=24", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    methods = [
        json.loads(p.read_text())["method"] for p in sorted((tmp_path / "sweep").glob("*/results.json"))
    ]
    assert methods == ["random", "appearance"]


def test_preset_sweep_runs_and_reports(tmp_path: Path):
    """`mwga +experiment=table3_bins` on a small corpus, then `mwga report` on its folder."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "MWGA_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "mwga_core.cli.main", "+experiment=table3_bins", "dataset.num_clips=30"]
    completed = subprocess.run(
        [*command, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.glob("*/results.json")) == ["results.json"] * 4
    assert (sweep_dir / "report" / "fig4_bins.png").is_file()  # written by the sweep callback

    out = tmp_path / "report"
    assert main(["report", str(sweep_dir), "--out", str(out)]) == 0
    for suffix in ("md", "csv", "tex"):
        assert (out / f"table3_bins.{suffix}").is_file()
        assert (out / f"summary.{suffix}").is_file()
    assert (out / "fig4_bins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("*.png")) == ["fig4_bins.png"]
    table = (out / "table3_bins.md").read_text()
    assert "| 16 |" in table and "0.2025" in table  # our B=16 row beside the paper's NDCG@20
    assert "N=30" in table
