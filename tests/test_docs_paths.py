"""Every source path and dotted module the docs and README name exists, so a move cannot leave them stale."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
SOURCE_PATH = re.compile(
    r"\b((?:mwga_core|plugins|conf|benches|tests|examples)/[\w/.-]*\.(?:py|yaml|json))\b"
)
DOTTED = re.compile(r"\b(mwga_(?:core|plugins)(?:\.\w+)+)")


def _dotted_exists(name: str) -> bool:
    """A dotted name is a module, or an attribute path below one (``mwga_core.api.models.ModelAdapter``)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except ModuleNotFoundError:
            continue
    return False


def _path_exists(path: str) -> bool:
    """Relative to the repository, or to the example plugin package that docs/writing-plugins.md walks through."""
    roots = [REPO, *(REPO / "examples").iterdir()]
    return any((root / path).exists() for root in roots)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_source_paths_exist(page: Path) -> None:
    missing = sorted({m for m in SOURCE_PATH.findall(page.read_text()) if not _path_exists(m)})
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_modules_exist(page: Path) -> None:
    names = {m.rstrip(".") for m in DOTTED.findall(page.read_text())}
    missing = sorted(name for name in names if not _dotted_exists(name))
    assert not missing, f"{page.relative_to(REPO)} names modules that do not exist: {missing}"


def test_the_folder_map_names_every_core_folder_with_its_module_count() -> None:
    """docs/architecture.md opens with the folder map; a folder added or grown must show up there."""
    page = (REPO / "docs" / "architecture.md").read_text()
    counts = dict(re.findall(r"^\| `(\w+)/` \| (\d+) \|", page, flags=re.MULTILINE))
    folders = {
        path.name: len([p for p in path.glob("*.py") if p.name != "__init__.py"])
        for path in (REPO / "mwga_core").iterdir()
        if (path / "__init__.py").exists()
    }
    assert {name: int(n) for name, n in counts.items()} == folders
    tree = page.split("## The folder map", 1)[1].split("## ", 1)[0]
    assert all(f"── {name}/" in tree for name in folders), "a core folder is missing from the folder tree"
