"""Plugin subcommands (hook ``mwga_register_commands``): registered, refused when taken, dispatched by ``mwga``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mwga_core import hookimpl
from mwga_core.cli.main import SUBCOMMANDS, main
from mwga_core.plugin_host.commands import BUILTIN_SUBCOMMANDS
from mwga_core.plugin_host.host import PluginHost


class CommandPlugin:
    def __init__(self, name: str, function=lambda args: 7) -> None:
        self.name, self.function = name, function

    @hookimpl
    def mwga_register_commands(self, register):
        register(self.name, self.function, help="a test command")


def test_builtin_subcommand_names_are_reserved_exactly() -> None:
    assert set(SUBCOMMANDS) == BUILTIN_SUBCOMMANDS


def test_a_registered_command_is_listed_with_its_plugin() -> None:
    host = PluginHost()
    record = host.add_plugin(CommandPlugin("say-hello"), "hello")
    assert record.status != "failed" and record.registered == {"commands": ["say-hello"]}
    assert host.commands.commands["say-hello"].function([]) == 7


@pytest.mark.parametrize(
    ("name", "reason"),
    [("index", "built-in mwga subcommand"), ("Bad_Name", "must match"), ("say-hello", "already registered")],
)
def test_a_taken_or_malformed_name_fails_the_newcomer_whole(name: str, reason: str) -> None:
    host = PluginHost()
    host.add_plugin(CommandPlugin("say-hello"), "first")
    record = host.add_plugin(CommandPlugin(name, lambda args: 1), "second")
    assert record.status == "failed" and reason in record.error
    assert set(host.commands.commands) == {"say-hello"}
    assert host.commands.commands["say-hello"].plugin == "first"


def test_train_raft_is_the_raft_plugins_command() -> None:
    from mwga_core.plugin_host.host import get_host

    spec = get_host().commands.commands["train-raft"]
    assert spec.plugin == "raft"


def test_an_unknown_word_is_one_line_listing_the_subcommands(capsys) -> None:
    assert main(["indx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown subcommand 'indx'") and "train-raft" in err and "\n" not in err


def test_mwga_runs_a_third_party_command(tmp_path: Path) -> None:
    """A real distribution on the path, found through its entry point, run by the mwga console entry."""
    package = tmp_path / "hello_cmd"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from mwga_core import hookimpl

            @hookimpl
            def mwga_register_commands(register):
                register("say-hello", lambda args: print("hello", *args) or 3, help="greets")
            """
        )
    )
    dist = tmp_path / "hello_cmd-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-cmd\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mwga]\nhello_cmd = hello_cmd\n")
    result = subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", "say-hello", "world"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "hello world"
