"""``mwga index`` and ``mwga cache`` from the command line: a wrong folder is refused in one line and nothing is deleted."""

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


def test_cache_clear_refuses_a_folder_that_is_not_an_mwga_cache(tmp_path: Path) -> None:
    """``mwga cache clear --dir X`` once deleted inside every subfolder of any X."""
    thesis = tmp_path / "thesis"
    (thesis / "figures").mkdir(parents=True)
    (thesis / "figures" / "plot.png").write_bytes(b"months of work")
    result = _mwga("cache", "clear", "--dir", str(thesis), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        "is not an mwga cache folder (it holds figures)" in result.stderr and "Traceback" not in result.stderr
    )
    assert (thesis / "figures" / "plot.png").read_bytes() == b"months of work"
