"""One module per subcommand in mwga_core/cli/, a main that only dispatches, and a docs section for each."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from mwga_core.cli.main import RUN_TARGET, SUBCOMMANDS

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "mwga_core" / "cli"
#: cli modules that are no subcommand: the dispatcher and what every command prints
SHARED_MODULES = {"__init__", "main", "messages"}


def core_targets() -> dict[str, str]:
    """Subcommand -> target, for the subcommands mwga_core itself implements (plus the bare run)."""
    targets = {name: target for name, target in SUBCOMMANDS.items() if target.startswith("mwga_core.")}
    return {**targets, "run": RUN_TARGET}


def test_each_core_subcommand_is_a_cli_module_of_its_name() -> None:
    for name, target in core_targets().items():
        module, function = target.split(":")
        assert module == f"mwga_core.cli.{name.replace('-', '_')}", f"mwga {name} -> {target}"
        assert callable(getattr(importlib.import_module(module), function)), target


def test_every_cli_module_is_a_subcommand() -> None:
    modules = {path.stem for path in CLI.glob("*.py")} - SHARED_MODULES
    commands = {name.replace("-", "_") for name in core_targets()}
    assert modules == commands, f"cli modules without a subcommand: {sorted(modules - commands)}"


def test_main_only_dispatches() -> None:
    """cli/main.py defines the dispatch table and main(), nothing a subcommand does."""
    tree = ast.parse((CLI / "main.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions <= {"main", "_load", "_could_be_a_command", "_plugin_command"}, functions
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any(name and name.startswith(("hydra", "omegaconf", "torch", "numpy")) for name in imported)


def test_the_cli_page_has_a_section_per_subcommand() -> None:
    headings = re.findall(r"^## (mwga [\w-]+)", (REPO / "docs" / "cli.md").read_text(), flags=re.MULTILINE)
    missing = [name for name in SUBCOMMANDS if f"mwga {name}" not in headings]
    assert not missing, f"docs/cli.md has no '## mwga <name>' section for: {missing}"
