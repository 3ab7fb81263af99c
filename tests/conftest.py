"""Shared fixtures: a fresh plugin host, composed configs and a run context writing to a temp folder."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from mwga_core.api.context import RunContext
from mwga_core.config.schema import MwgaConfig
from mwga_core.plugin_host.host import PluginHost, get_host, reset_host


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point MWGA_CACHE_DIR at a temp folder, so no test reads or writes the user's ~/.cache/mwga."""
    cache = tmp_path_factory.mktemp("mwga-cache")
    previous = os.environ.get("MWGA_CACHE_DIR")
    os.environ["MWGA_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("MWGA_CACHE_DIR", None)
    else:
        os.environ["MWGA_CACHE_DIR"] = previous


@pytest.fixture
def host() -> Iterator[PluginHost]:
    """A freshly loaded plugin host; the process-wide host is forgotten again afterwards."""
    reset_host()
    yield get_host()
    reset_host()


@pytest.fixture
def compose_config(host: PluginHost) -> Callable[..., MwgaConfig]:
    """``compose_config(*overrides)``: the typed run config ``mwga <overrides>`` runs.

    The ConfigStore is filled from ``host`` at call time, so plugins added with ``host.add_plugin``
    before the call appear as config options.
    """
    from mwga_core.config.compose import compose

    return lambda *overrides: compose(overrides, host=host)


@pytest.fixture
def console_text() -> io.StringIO:
    """Where the run context's console writes (warnings, stage lines); read it with ``getvalue()``."""
    return io.StringIO()


@pytest.fixture
def ctx(tmp_path: Path, console_text: io.StringIO) -> RunContext:
    """A seed-0 CPU run context with its output and cache folders under ``tmp_path``."""
    return RunContext(
        seed=0,
        device="cpu",
        cache_dir=tmp_path / "cache",
        output_dir=tmp_path / "output",
        show_progress=False,
        console=Console(file=console_text, width=200, color_system=None),
    )


@pytest.fixture
def write_clips() -> Callable[[Path, int, int], None]:
    """``write(folder, start, count)``: benchmark clips start..start+count-1 as uint8 .npy files, one
    folder per pattern (clip i is pattern i mod 6, seeded by i; 8 frames of 24x24), fast to read."""
    import numpy as np
    from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, render_clip

    def write(folder: Path, start: int, count: int) -> None:
        for index in range(start, start + count):
            pattern = PATTERNS[index % len(PATTERNS)]
            config = SyntheticConfig(num_frames=8, size=24)
            frames, _ = render_clip(pattern, np.random.default_rng(index), config)
            (folder / pattern).mkdir(parents=True, exist_ok=True)
            np.save(folder / pattern / f"clip_{index:03d}.npy", np.rint(frames * 255).astype(np.uint8))

    return write
