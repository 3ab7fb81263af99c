"""A fast start: `mwga --help`, `mwga plugins` and a cached run import only what they use, and the help
page lists the config groups from one copy of Hydra's config repository without changing a character.
(How fast is measured by benches/startup.py, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: modules no start-up path may pay for: the heavy libraries, and what only a run's job uses
HEAVY = ("torch", "cv2", "matplotlib", "faiss", "diffusers", "transformers")


def imported_after(code: str, tmp_path: Path) -> list[str]:
    """The modules of interest in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    watched = [*HEAVY, "rich.progress", "mwga_core.reporting.results", "mwga_core.reporting.sweep"]
    script = (
        "import sys, json, contextlib, io\n"
        f"{code}\n"
        f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    code = (
        "from mwga_core.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    assert imported_after(code, tmp_path) == []


def test_plugins_imports_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "from mwga_core.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['plugins'])"
    )
    assert not set(imported_after(code, tmp_path)) & set(HEAVY)


def test_checking_the_cpu_device_needs_no_torch(tmp_path: Path) -> None:
    """A fully cached run imports torch for nothing else: `device=cpu` is always usable."""
    code = "from mwga_core.pipeline.run import check_device\ncheck_device('cpu')"
    assert "torch" not in imported_after(code, tmp_path)


def test_a_bad_device_is_still_refused() -> None:
    from mwga_core.api.errors import ConfigValueError
    from mwga_core.pipeline.run import check_device

    with pytest.raises(ConfigValueError, match="device"):
        check_device("not-a-device")


@pytest.mark.parametrize(
    ("flag", "a_group_line"), [("--help", "scorer: "), ("--hydra-help", "hydra/launcher: ")]
)
def test_the_help_page_is_the_same_from_one_repository_copy(
    flag: str, a_group_line: str, host, capsys, monkeypatch
) -> None:
    """Hydra deep-copies its whole config repository for every group it lists; the help now copies it
    once. Same page, character for character."""
    from hydra._internal import config_loader_impl

    from mwga_core.cli import run
    from mwga_core.config.schema import register_configs

    register_configs(host)
    copies = []
    original = config_loader_impl.CachingConfigRepository.__init__

    def counting(self, delegate):
        copies.append(1)
        original(self, delegate)

    monkeypatch.setattr(config_loader_impl.CachingConfigRepository, "__init__", counting)
    pages = []
    for shared in (False, True):
        copies.clear()
        monkeypatch.setattr(sys, "argv", ["mwga", flag])
        with (
            run.group_listing_from_one_repository_copy() if shared else _nothing(),
            pytest.raises(SystemExit),
        ):
            run.hydra_app()
        pages.append((capsys.readouterr().out, len(copies)))
    (plain, plain_copies), (shared_page, shared_copies) = pages
    assert a_group_line in plain and shared_page == plain
    assert plain_copies > 20 and shared_copies <= 2


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
