"""The one typed config: compose -> to_typed, the stored form, one-line errors and declared field checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from mwga_core.api.errors import ConfigValueError
from mwga_core.config.checks import above, at_least, check_fields, one_of, satisfies
from mwga_core.config.compose import ConfigCompositionError, compose, from_container, to_typed
from mwga_core.config.schema import MwgaConfig, as_container, register_configs
from mwga_core.plugin_host.host import PluginHost

CONF = Path(__file__).resolve().parents[2] / "conf"
METHODS = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))


def composed(host: PluginHost, *overrides: str):
    register_configs(host)
    with initialize_config_module("mwga_conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides",
    [[], *([f"method={m}"] for m in METHODS), *([f"+experiment={e}"] for e in EXPERIMENTS)],
    ids=lambda overrides: " ".join(overrides) or "default",
)
def test_the_typed_config_stores_as_the_composed_one(host: PluginHost, overrides: list[str]) -> None:
    """results.json dumps the typed config: it must be byte for byte the dict Hydra composed."""
    cfg = composed(host, *overrides)
    typed = to_typed(cfg)
    assert isinstance(typed, MwgaConfig)
    assert type(typed.descriptor).__name__ == type(OmegaConf.to_object(cfg.descriptor)).__name__
    expected = json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=2)
    assert json.dumps(as_container(typed), indent=2) == expected
    assert from_container(as_container(typed), host=host) == typed  # an index manifest reads back the same


def test_compose_gives_the_typed_config(host: PluginHost) -> None:
    cfg = compose(["method=ours_simulated", "descriptor.bins=16"], host=host)
    assert (
        cfg.descriptor.bins == 16 and cfg.gradient.name == "simulated" and cfg.method_name == "ours_simulated"
    )
    assert compose([], host=host, config_name="index").dataset.name == "video_folder"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("descriptor.bin=3", "descriptor.bin: no such field in HoofConfig; its fields: bins, normalize"),
        (
            "+descriptor.max_magnitud=1.5",
            "descriptor.max_magnitud: no such field in HoofConfig; its fields: bins, normalize",
        ),
        ("+foo=1", "foo: no such field in MwgaConfig; its fields: dataset, motion,"),
        ("model.training.stepz=3", "model.training.stepz: no such field in TrainingConfig"),
        ("descriptor=hooof", "descriptor=hooof: no such option; options: affine, appearance,"),
        (
            "descriptor.bins=abc",
            "descriptor.bins: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("descriptor.bins=[1,", "cannot parse an override:"),
        ("~model", "model: no component chosen; pick one with model=<name>"),
        ("~descriptor", "descriptor: no component chosen"),
        ("eval=???", "eval: no value"),
        ("static_threshold=nan", "static_threshold=nan is not allowed: expected a finite number"),
        ("dataset.speed=[0.5,inf]", "dataset.speed[1]=inf is not allowed: expected a finite number"),
        ("static_threshold=-inf", "static_threshold=-inf is not allowed: expected a finite number"),
    ],
)
def test_a_config_that_does_not_compose_is_one_line(host: PluginHost, override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionError) as raised:
        compose([override], host=host)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("override", "field_name", "allowed"),
    [
        ("static_threshold=-1", "static_threshold", "a number >= 0"),
        ("query=sometimes", "query", "one of ['heldout', 'generated']"),
        ("executor=dask", "executor", "one of ['local', 'ray']"),
        ("ray_chunk_clips=0", "ray_chunk_clips", "an integer >= 1"),
    ],
)
def test_the_run_fields_declare_their_ranges(host: PluginHost, override: str, field_name: str, allowed: str):
    with pytest.raises(ConfigValueError) as raised:
        compose([override], host=host)
    assert raised.value.field == field_name and raised.value.allowed == allowed


def test_a_method_preset_never_blocks_swapping_a_component(host: PluginHost) -> None:
    """method=ours (the default) picks scorer=cosine_neighbours; scorer=dot replaces it whole."""
    assert compose([], host=host).scorer.neighbours == 5
    assert compose(["scorer=dot"], host=host).scorer.name == "dot"
    assert compose(["projection=none"], host=host).projection.name == "none"
    assert compose(["scorer=cosine"], host=host).scorer.neighbours == 0  # the plain option, not the preset's
    assert compose(["method=ours_generative", "gradient=simulated"], host=host).gradient.name == "simulated"


@dataclass
class Example:
    count: int = field(default=1, metadata=at_least(1))
    rate: float = field(default=0.5, metadata=above(0, note="per step"))
    damping: float = field(default=0.0, metadata=at_least(0, finite=True))
    mode: str = field(default="a", metadata=one_of("a", "b"))
    size: list = field(default_factory=lambda: [8], metadata=satisfies(lambda v: min(v) >= 8, "sides >= 8"))


@pytest.mark.parametrize(
    ("changes", "field_name", "allowed"),
    [
        ({"count": 0}, "count", "an integer >= 1"),
        ({"count": 1.5}, "count", "an integer >= 1"),
        ({"count": True}, "count", "an integer >= 1"),
        ({"rate": 0.0}, "rate", "a number > 0 (per step)"),
        ({"rate": float("nan")}, "rate", "a number > 0 (per step)"),
        ({"damping": float("inf")}, "damping", "a finite number >= 0"),
        ({"mode": "c"}, "mode", "one of ['a', 'b']"),
        ({"size": [4]}, "size", "sides >= 8"),
        ({"size": []}, "size", "sides >= 8"),  # min() of nothing is refused, not a crash
    ],
)
def test_declared_checks_refuse_with_the_fields_message(changes: dict, field_name: str, allowed: str) -> None:
    check_fields(Example())
    with pytest.raises(ConfigValueError) as raised:
        check_fields(Example(**changes))
    assert (raised.value.field, raised.value.allowed) == (field_name, allowed)


def test_a_message_with_square_brackets_reaches_the_terminal_whole(tmp_path) -> None:
    """rich once ate "[min, max]" from "expected [min, max] of finite numbers" (issue 14, poor messages)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", "dataset.speed=[2,0.5]", "method=ours_simulated"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: dataset.speed=[2.0, 0.5] is not allowed: expected [min, max] of finite numbers with "
        "0 < min <= max."
    )


def test_a_non_finite_component_field_is_refused(host: PluginHost) -> None:
    """``gradient.noise_scale=nan`` once gave all-zero scores and a table (issue 14, item 3)."""
    with pytest.raises(ConfigCompositionError, match=r"^gradient.noise_scale=nan is not allowed"):
        compose(["method=ours_simulated", "gradient.noise_scale=nan"], host=host)
