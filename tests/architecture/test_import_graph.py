"""The import graph of mwga_core, read from the source with ``ast`` (nothing is imported): no import
cycle between its modules, no import of a built-in plugin (``mwga_plugins``), no built-in component built
by a hard-coded name.

Every ``import`` and ``from ... import`` counts, at module level and inside functions, with relative
imports resolved against the importing module's package. ``from package import name`` is an edge to
``package.name`` when that is a module of the package, else to ``package``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mwga_core.plugin_host.host import BUILTIN_DISTRIBUTION, PluginHost

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "mwga_core"
PLUGINS_PACKAGE = "mwga_plugins"

# -- the graph --------------------------------------------------------------------------------------


@dataclass
class ModuleSource:
    """One module: its dotted name, file and parsed tree."""

    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


@dataclass
class ImportGraph:
    """Modules of one package and, for each, the modules it imports (inside and outside the package)."""

    modules: dict[str, ModuleSource]
    #: module -> the package's modules it imports
    edges: dict[str, set[str]] = field(default_factory=dict)
    #: module -> every dotted name it imports, inside the package or not
    imported: dict[str, set[str]] = field(default_factory=dict)


def read_modules(root: Path, package: str) -> dict[str, ModuleSource]:
    """Every ``*.py`` under ``root`` (the folder of ``package``), by dotted module name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((package, *parts))
        name = name.removesuffix(".__init__")
        modules[name] = ModuleSource(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


def imported_names(module: ModuleSource) -> Iterator[str]:
    """The dotted names ``module`` imports anywhere in its body (``from a import b`` gives a and a.b)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def build_graph(root: Path, package: str) -> ImportGraph:
    """The import graph of ``package``, whose source is the folder ``root``."""
    graph = ImportGraph(read_modules(root, package))
    for name, module in graph.modules.items():
        graph.imported[name] = set(imported_names(module))
        targets = set()
        for imported in graph.imported[name]:
            while imported and imported not in graph.modules:  # a.b.function -> a.b
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph.edges[name] = targets
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each an import cycle), sorted.

    Tarjan's algorithm, iterative so deep graphs cannot hit the recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(edges.get(successor, ())))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def string_arguments(call: ast.Call) -> Iterator[str]:
    """String constants among a call's arguments, looking inside list, tuple, set and dict literals."""
    pending: list[ast.AST] = [*call.args, *(keyword.value for keyword in call.keywords)]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            pending.extend(node.elts)
        elif isinstance(node, ast.Dict):
            pending.extend(value for value in node.values if value is not None)


def chooses_by_name(call: ast.Call, names: set[str], choices: set[str]) -> bool:
    """Whether ``call`` builds or looks up a component by a constant name: ``host.build(group, "x")``,
    ``host.build(group, {"name": "x"})``, ``registry.get("x")``, or composes an override ``"group=x"``."""
    kind = called_name(call)
    looked_up = kind == "get" and "registry" in ast.unparse(call.func)
    if kind not in {"build", "compose"} and not looked_up:
        return False
    return any(text in choices or (kind != "compose" and text in names) for text in string_arguments(call))


def called_name(call: ast.Call) -> str:
    """``build`` for ``host.build(...)``, ``compose`` for ``compose(...)``; "" for anything else."""
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else ""


# -- mwga_core ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def core() -> ImportGraph:
    graph = build_graph(CORE, "mwga_core")
    assert len(graph.modules) > 50 and "mwga_core.pipeline.run" in graph.modules
    return graph


@pytest.fixture(scope="module")
def builtin_names() -> dict[str, set[str]]:
    """Config group -> the component names mwga's own plugins register."""
    host = PluginHost()
    host.load_entry_points()
    builtin = {r.name for r in host.records.values() if r.distribution == BUILTIN_DISTRIBUTION}
    names = {
        group: {spec.name for spec in registry.specs() if spec.plugin in builtin}
        for group, registry in host.registries.items()
    }
    assert names["descriptor"] >= {"hoof"} and names["motion"] >= {"farneback"}
    return names


def test_no_import_cycle_between_core_modules(core: ImportGraph) -> None:
    found = cycles(core.edges)
    assert not found, "import cycles (each line: the modules of one cycle):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in found
    )


def test_the_core_imports_no_builtin_plugin(core: ImportGraph) -> None:
    offenders = {
        module: sorted(n for n in names if n == PLUGINS_PACKAGE or n.startswith(PLUGINS_PACKAGE + "."))
        for module, names in core.imported.items()
    }
    offenders = {module: names for module, names in offenders.items() if names}
    assert not offenders, f"mwga_core modules importing built-in plugins: {offenders}"


def test_the_core_names_no_plugin_module_in_strings(core: ImportGraph) -> None:
    """``importlib.import_module("mwga_plugins....")`` or a ``module:function`` target is an import too."""
    pattern = re.compile(rf"^{PLUGINS_PACKAGE}(\.\w+)+(:\w+)?$")
    offenders = sorted(
        f"{name}: {node.value!r}"
        for name, module in core.modules.items()
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.match(node.value)
    )
    assert not offenders, "mwga_core names built-in plugin modules:\n" + "\n".join(offenders)


def test_the_core_builds_no_builtin_component_by_name(
    core: ImportGraph, builtin_names: dict[str, set[str]]
) -> None:
    """``host.build("motion", {"name": "farneback"})``, ``registry.get("hoof")`` or a composed override
    ``"dataset=video_folder"`` ties the core to one built-in: it must come from the config instead."""
    every_name = set().union(*builtin_names.values())
    choices = {f"{group}={name}" for group, names in builtin_names.items() for name in names}
    offenders = [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for name, module in core.modules.items()
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call) and chooses_by_name(node, every_name, choices)
    ]
    assert not offenders, "built-in components chosen by name in mwga_core:\n" + "\n".join(offenders)


# -- the graph reader itself -------------------------------------------------------------------------


def test_cycles_finds_each_cycle_once_and_ignores_chains() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert cycles(edges) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_level_imports_are_edges(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text(
        textwrap.dedent(
            """
            def late():
                from ..top import thing
                import mwga_plugins.datasets.synthetic
            """
        )
    )
    (package / "top.py").write_text("from pkg.sub.leaf import late\n")
    graph = build_graph(package, "pkg")
    assert graph.edges["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph.edges["pkg.sub.leaf"] == {"pkg.top"}
    assert graph.edges["pkg.top"] == {"pkg.sub.leaf"}
    assert "mwga_plugins.datasets.synthetic" in graph.imported["pkg.sub.leaf"]
    assert cycles(graph.edges) == [["pkg.sub.leaf", "pkg.top"]]


def test_string_arguments_look_inside_literals() -> None:
    call = ast.parse('host.build("motion", {"name": "farneback", "n": 3}, ["dataset=x"])').body[0].value
    assert called_name(call) == "build"
    assert set(string_arguments(call)) == {"motion", "farneback", "dataset=x"}
    names, choices = {"farneback", "hoof"}, {"motion=farneback", "descriptor=hoof"}
    assert chooses_by_name(call, names, choices)
    for harmless in ('host.build("motion", cfg.motion)', 'manifest.get("hoof")', 'compose(["seed=1"])'):
        assert not chooses_by_name(ast.parse(harmless).body[0].value, names, choices), harmless
    for chosen in ('host.registry("descriptor").get("hoof")', 'compose(["descriptor=hoof", *overrides])'):
        assert chooses_by_name(ast.parse(chosen).body[0].value, names, choices), chosen
