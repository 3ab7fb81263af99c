"""Which project modules a module's results can depend on: the modules it imports, read from its source.

A stored entry's key hashes the source of the code that made it (:func:`mwga_core.storage.keys.code_version`).
The class of a component is not enough: a gradient source calls helpers in other modules (the still
copies, the contrasts, the model inputs), and editing one of them changes the result just as much. So
the key covers the *import closure* of the component's module: every module it imports, at the top or
inside a function (mwga imports heavy helpers lazily), and every module those import, in turn.

Only *project* modules are followed: those of ``mwga_core`` and ``mwga_plugins``, and those of the
component's own top-level package (a third-party plugin's helpers). Libraries (numpy, torch, OpenCV) are
not: their versions are not in any key (``mwga cache clear`` after upgrading them). Imports the source does
not spell out (``importlib.import_module(name)`` with a computed name) are not seen either.

Nothing is imported to find the modules: names are resolved against the top-level package's folders, so
asking does not load torch or any plugin.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

#: the packages whose modules are always followed, besides the asking module's own top-level package
PROJECT_PACKAGES = ("mwga_core", "mwga_plugins")


def imported_project_modules(module_name: str) -> frozenset[str]:
    """``module_name`` and every project module it imports, directly or through others.

    Project modules are those of :data:`PROJECT_PACKAGES` and of ``module_name``'s own top-level package.
    Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so packages on the way count.
    A module whose source cannot be found (built-in, compiled, not installed) ends the walk there.
    """
    roots = frozenset(PROJECT_PACKAGES) | {module_name.partition(".")[0]}
    found: set[str] = set()
    pending = [module_name]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        for imported in _direct_imports(name):
            if imported.partition(".")[0] in roots:
                parts = imported.split(".")
                pending.extend(".".join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(name for name in found if name == module_name or module_file(name) is not None)


@functools.cache
def module_file(module_name: str) -> Path | None:
    """The source file of a module, without importing it: from ``sys.modules`` when it is loaded, else
    from its top-level package's folders (``a/b/c.py`` or ``a/b/c/__init__.py``). None if there is none.

    Cached per process, like the source hashes that use it.
    """
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) if module is not None else None
    if path:
        return Path(path) if path.endswith(".py") else None
    top, _, rest = module_name.partition(".")
    package = sys.modules.get(top)
    if package is None or not rest:
        return None
    for folder in getattr(package, "__path__", None) or []:
        base = Path(folder).joinpath(*rest.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@functools.cache
def _direct_imports(module_name: str) -> frozenset[str]:
    """Absolute names of the modules (or, for ``from m import x``, of ``m`` and of ``m.x`` where that is a
    module) that ``module_name``'s source imports anywhere in it. Empty when its source is unreadable."""
    path = module_file(module_name)
    if path is None:
        return frozenset()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(names)


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` written in ``package``; None when the
    dots climb above the top-level package."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))
