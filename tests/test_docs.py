"""The docs cover what the code offers: every hook, config group, option, field, subcommand and env var.

What is checked, and where it must be documented:

* each hook in ``mwga_core/plugin_host/hookspecs.py`` -> ``docs/hooks/<hook>.md`` (and no page for a hook that is gone);
* each config group (the component kinds, plus every folder of ``conf/`` such as ``method``) ->
  a heading ``## <group>`` in ``docs/reference.md``;
* each component registered by mwga itself, and each preset ``conf/<group>/<name>.yaml`` -> a heading
  ``### <group>=<name>`` in ``docs/reference.md``, whose section names every field of the component's
  config dataclass in backticks (`` `field` ``);
* each subcommand in ``mwga_core.cli.main.SUBCOMMANDS`` -> ``mwga <subcommand>`` in ``docs/cli.md``;
* each environment variable ``MWGA_...`` named in ``mwga_core/`` or ``plugins/`` -> ``docs/cli.md``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mwga_core.plugin_host import hookspecs
from mwga_core.plugin_host.host import BUILTIN_DISTRIBUTION, PluginHost
from mwga_core.plugin_host.kinds import KINDS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CONF = REPO / "conf"
ENV_VAR = re.compile(r"\bMWGA_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def hook_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(
        name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker)
    )


def preset_groups() -> dict[str, list[str]]:
    """conf/ folders holding YAML presets (method, experiment, ...) -> preset names."""
    return {
        folder.name: sorted(path.stem for path in folder.glob("*.yaml"))
        for folder in sorted(CONF.iterdir())
        if folder.is_dir() and any(folder.glob("*.yaml"))
    }


def markdown_sections(text: str) -> dict[str, str]:
    """Heading line (without the #s) -> the text up to the next heading of the same or a higher level.

    Lines inside fenced code blocks are never headings.
    """
    headings: list[tuple[int, int, str]] = []  # (line index, level, title)
    lines = text.splitlines()
    fenced = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            headings.append((index, len(match.group(1)), match.group(2)))
    sections: dict[str, str] = {}
    for position, (index, level, title) in enumerate(headings):
        end = next((i for i, lev, _ in headings[position + 1 :] if lev <= level), len(lines))
        sections[title] = "\n".join(lines[index + 1 : end])
    return sections


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    return markdown_sections((DOCS / "reference.md").read_text())


@pytest.fixture(scope="module")
def builtin_specs() -> list:
    """Every component registered by mwga's own distribution (third-party plugins document themselves)."""
    host = PluginHost()
    host.load_entry_points()
    builtin = {r.name for r in host.records.values() if r.distribution == BUILTIN_DISTRIBUTION}
    specs = [
        spec for registry in host.registries.values() for spec in registry.specs() if spec.plugin in builtin
    ]
    assert specs, "no built-in component registered: is mwga installed (pip install -e .)?"
    return specs


def test_every_hook_has_a_page() -> None:
    names = hook_names()
    assert len(names) >= 6
    missing = [name for name in names if not (DOCS / "hooks" / f"{name}.md").is_file()]
    assert not missing, f"hooks without a page docs/hooks/<hook>.md: {missing}"
    for name in names:
        assert name in (DOCS / "hooks" / f"{name}.md").read_text(), f"docs/hooks/{name}.md never names {name}"


def test_no_page_for_a_hook_that_does_not_exist() -> None:
    stale = sorted({path.stem for path in (DOCS / "hooks").glob("*.md")} - set(hook_names()))
    assert not stale, f"docs/hooks/ has pages for unknown hooks (renamed or removed?): {stale}"


def test_every_config_group_has_a_section(reference: dict[str, str]) -> None:
    groups = [kind.group for kind in KINDS] + list(preset_groups())
    assert "method" in groups
    missing = [group for group in groups if group not in reference]
    assert not missing, f"config groups without a '## <group>' heading in docs/reference.md: {missing}"


def test_every_builtin_component_and_field_is_documented(reference: dict[str, str], builtin_specs) -> None:
    problems = []
    for spec in builtin_specs:
        group = next(kind.group for kind in KINDS if kind.name == spec.kind)
        heading = f"{group}={spec.name}"
        if heading not in reference:
            problems.append(f"no '### {heading}' section")
            continue
        for config_field in dataclasses.fields(spec.config):
            if config_field.name != "name" and f"`{config_field.name}`" not in reference[heading]:
                problems.append(f"'### {heading}' does not mention `{config_field.name}`")
    assert not problems, "docs/reference.md is missing:\n" + "\n".join(problems)


def test_every_preset_is_documented(reference: dict[str, str]) -> None:
    presets = preset_groups()
    assert "ours" in presets.get("method", [])
    missing = [f"{group}={name}" for group, names in presets.items() for name in names]
    missing = [heading for heading in missing if heading not in reference]
    assert not missing, f"presets without a '### <group>=<name>' section in docs/reference.md: {missing}"


def test_every_subcommand_is_in_the_cli_page() -> None:
    from mwga_core.cli.main import SUBCOMMANDS

    text = (DOCS / "cli.md").read_text()
    missing = [name for name in SUBCOMMANDS if f"mwga {name}" not in text]
    assert not missing, f"subcommands not described in docs/cli.md (as `mwga <name>`): {missing}"


def test_every_env_var_is_in_the_cli_page() -> None:
    used: set[str] = set()
    for folder in ("mwga_core", "plugins"):
        for path in (REPO / folder).rglob("*.py"):
            used |= set(ENV_VAR.findall(path.read_text(encoding="utf-8")))
    assert {"MWGA_STRICT_PLUGINS", "MWGA_BLOCK_PLUGINS"} <= used
    text = (DOCS / "cli.md").read_text()
    missing = sorted(name for name in used if name not in text)
    assert not missing, f"environment variables not described in docs/cli.md: {missing}"


def test_section_parser_finds_fields_and_ignores_code_fences() -> None:
    text = "## descriptor\n### descriptor=hoof\n| `bins` |\n```\n# not a heading\n```\n`normalize`\n### descriptor=x\n"
    sections = markdown_sections(text)
    assert "`bins`" in sections["descriptor=hoof"] and "`normalize`" in sections["descriptor=hoof"]
    assert "not a heading" not in sections
    assert "descriptor=x" in sections["descriptor"]  # a level-2 section contains its level-3 sections
