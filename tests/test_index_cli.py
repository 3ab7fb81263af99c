"""``mwga index`` from the command line: a wrong --out or corpus is refused in one line and deletes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=3600,
    )


@pytest.mark.parametrize("corpus", ["/no/such/folder", "thesis"])
def test_rebuild_into_a_folder_of_other_files_deletes_nothing(tmp_path: Path, corpus: str) -> None:
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    result = _mwga("index", corpus, "--out", "thesis", "--rebuild", "method=ours_simulated", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert (thesis / "chapter1.tex").read_text() == "months of work"
