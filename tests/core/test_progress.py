"""Progress when nobody watches a terminal: periodic plain lines, so a log file or CI shows a run is alive.

The interval comes from ``MWGA_PROGRESS_INTERVAL``; the tests set it to 0 (a line per step) or to an hour
(no line), so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from mwga_core.api.errors import ConfigValueError
from mwga_core.api.progress import INTERVAL_ENV, format_seconds, line_interval, make_progress

MWGA = Path(sys.executable).with_name("mwga")
#: never tight: it only stops a hung process, and a loaded machine can be 10x slower than a quiet one
GENEROUS_TIMEOUT_S = 3600


def plain_console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=60, color_system=None), text


def run_steps(steps: int) -> str:
    console, text = plain_console()
    with make_progress("training model", steps, enabled=False, console=console) as bar:
        for _ in range(steps):
            bar.advance()
    return text.getvalue()


def test_every_step_prints_a_line_at_interval_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    lines = run_steps(4).splitlines()
    assert [line.split(",")[0] for line in lines[:4]] == [
        f"training model: {k}/4 ({25 * k}%)" for k in (1, 2, 3, 4)
    ]
    assert re.fullmatch(r"training model: 1/4 \(25%\), \d+ s elapsed, about \d+ s left", lines[0])
    assert re.fullmatch(r"training model: 4/4 \(100%\), done in \d+ s", lines[-1])
    assert len(lines) == 5  # one per step, then the closing line; never wrapped at the console's width


def test_a_stage_shorter_than_the_interval_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    assert run_steps(50) == ""
    monkeypatch.setenv(INTERVAL_ENV, "off")
    assert run_steps(50) == ""


def test_a_failed_stage_gets_no_done_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    console, text = plain_console()
    with (
        pytest.raises(RuntimeError, match="stopped"),
        make_progress("gradients", 3, enabled=False, console=console) as bar,
    ):
        bar.advance()
        raise RuntimeError("stopped")
    assert text.getvalue().splitlines()[0].startswith("gradients: 1/3 (33%)")
    assert "done" not in text.getvalue()


def test_uncounted_work_prints_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """``total=None`` has no steps: a heartbeat thread reports the elapsed time while it runs."""
    monkeypatch.setenv(INTERVAL_ENV, "0")
    console, text = plain_console()
    with make_progress("dataset (video folder)", None, enabled=False, console=console):
        # wait for the first heartbeat (about 1 s); the bound only guards against a hang
        deadline = time.monotonic() + GENEROUS_TIMEOUT_S
        while "elapsed" not in text.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = text.getvalue().splitlines()
    assert re.fullmatch(r"dataset \(video folder\): \d+ s elapsed", lines[0])
    assert re.fullmatch(r"dataset \(video folder\): done in \d+ s", lines[-1])


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(INTERVAL_ENV, value)
    with pytest.raises(ConfigValueError, match=f"{INTERVAL_ENV}='{value}' is not allowed"):
        line_interval()


def test_interval_default_and_seconds_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert line_interval() == 30.0
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


# -- the command line, stderr to a pipe ------------------------------------------------------------


def run_mwga(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_") and k != "CI"}
    environment |= {"MWGA_CACHE_DIR": str(cwd / "cache"), **env}
    return subprocess.run(
        [str(MWGA), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=GENEROUS_TIMEOUT_S,
    )


def test_a_piped_run_logs_progress_lines(tmp_path: Path) -> None:
    run = run_mwga(["method=ours_simulated", "dataset.num_clips=24"], tmp_path, **{INTERVAL_ENV: "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert any(
        re.fullmatch(r"flow \(.+\): 1/24 \(4%\), \d+ s elapsed, about .+ left", line) for line in lines
    )
    assert any(re.fullmatch(r"gradients: 24/24 \(100%\), done in \d+ s", line) for line in lines)
    assert "Traceback" not in run.stderr


@pytest.mark.slow  # trains the default real-gradient model, on small settings
def test_a_piped_training_run_logs_training_progress(tmp_path: Path) -> None:
    small = ["dataset.num_clips=24", "model.training.steps=20", "model.training.checkpoints=[10]"]
    run = run_mwga(small, tmp_path, **{INTERVAL_ENV: "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert any(
        re.fullmatch(r"training model: 10/20 \(50%\), .+ elapsed, about .+ left", line) for line in lines
    )
    assert any(re.fullmatch(r"training model: 20/20 \(100%\), done in .+", line) for line in lines)
