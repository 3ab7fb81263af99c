"""Code hashes follow the project modules a component imports, not only the module of its class."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mwga_core.storage import imported_modules
from mwga_core.storage.imported_modules import imported_project_modules
from mwga_core.storage.keys import code_version, module_source_hash
from mwga_core.storage.stage_cache import StageCache

COMPONENT = """\
from . import constants
from .shapes import square


class Thing:
    config = {"a": 1}

    def run(self):
        from toypkg.lazy import helper  # imported only when it runs, as mwga does with heavy helpers

        return helper(square(constants.SIDE))
"""


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A third-party-like package ``toypkg`` whose component imports helpers three ways."""
    package = tmp_path / "toypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "component.py").write_text(COMPONENT)
    (package / "constants.py").write_text("SIDE = 3\n")
    (package / "shapes.py").write_text("def square(x):\n    return x * x\n")
    (package / "lazy.py").write_text("def helper(x):\n    return x + 1\n")
    (package / "unrelated.py").write_text("VALUE = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [name for name in sys.modules if name.partition(".")[0] == "toypkg"]:
        del sys.modules[name]
    _clear_caches()


def _clear_caches() -> None:
    """As a new process would: read every file afresh."""
    module_source_hash.cache_clear()
    imported_modules.module_file.cache_clear()
    imported_modules._direct_imports.cache_clear()


def test_the_closure_holds_relative_lazy_and_from_imports(toy_package: Path) -> None:
    from toypkg.component import Thing

    assert "toypkg.lazy" not in sys.modules
    closure = imported_project_modules("toypkg.component")
    assert closure >= {"toypkg", "toypkg.component", "toypkg.constants", "toypkg.shapes", "toypkg.lazy"}
    assert "toypkg.unrelated" not in closure
    assert not any(name.startswith(("numpy", "pytest")) for name in closure)  # libraries are not followed
    assert "toypkg.lazy" not in sys.modules  # finding it did not import it
    assert Thing().run() == 10


@pytest.mark.parametrize("helper", ["constants.py", "shapes.py", "lazy.py"])
def test_editing_an_imported_helper_changes_the_key(toy_package: Path, tmp_path: Path, helper: str) -> None:
    from toypkg.component import Thing

    cache = StageCache(tmp_path / "cache")
    before = cache.key("gradients", Thing())
    _clear_caches()
    assert cache.key("gradients", Thing()) == before  # reading again changes nothing
    with open(toy_package / helper, "a") as handle:
        handle.write("# edited\n")
    _clear_caches()
    assert cache.key("gradients", Thing()) != before


def test_editing_a_module_it_does_not_import_keeps_the_key(toy_package: Path, tmp_path: Path) -> None:
    from toypkg.component import Thing

    cache = StageCache(tmp_path / "cache")
    before = cache.key("gradients", Thing())
    (toy_package / "unrelated.py").write_text("VALUE = 1\n")
    _clear_caches()
    assert cache.key("gradients", Thing()) == before


def test_the_diffusion_sources_key_covers_its_helpers() -> None:
    # the still copies and the contrasts are plain functions in mwga_core.diffusion: editing them changes
    # the gradients, so it must change the key (it did not when only class modules were hashed)
    from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig

    modules = set(code_version(DiffusionGradient(DiffusionGradientConfig())))
    assert {"mwga_core.diffusion.still_copies", "mwga_core.diffusion.contrasts"} <= modules
    assert "mwga_plugins.gradients.diffusion" in modules and "mwga_core.api.gradients" in modules
