"""report.html in a real browser: headless Chromium loads it without a console message, its clips play
(two screenshots at different times differ) and a clip named like a script tag runs nothing.

Chromium's virtual time (``--virtual-time-budget``) runs the page's clock as fast as the machine allows
and stops it at the budget, so the frame reached does not depend on the machine's speed. Skipped only
where no Chromium binary exists (.ci/run installs Debian's ``chromium`` with apt-get where it can).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mwga_core.reporting.html_report import ReportPage, ShownClip, ShownQuery, render_page

BROWSER = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium binary on PATH: install Debian's `chromium` package (.ci/run does where apt-get works)",
)
#: what the injected names would do if they ran
PAYLOAD = "<script>document.title='pwned'</script>"
ATTRIBUTE_PAYLOAD = "<img src=x onerror=\"document.title='pwned'\">"


def moving_clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A rotating benchmark texture, 16 frames of 32x32, and its exact flow."""
    from mwga_plugins.datasets.synthetic import SyntheticConfig, render_clip

    frames, flow = render_clip("rotation_cw", np.random.default_rng(seed), SyntheticConfig())
    return frames[..., None], flow


def page_of(queries: int, top: int) -> ReportPage:
    page = ReportPage("test page")
    for q in range(queries):
        frames, flow = moving_clip(100 + q)
        shown = [
            ShownClip(
                f"c{q}{r}", f"clip_{q}{r}.npy", 1.0 - r / 10, moving_clip(10 * q + r)[0], label="rotation"
            )
            for r in range(top)
        ]
        scores = np.random.default_rng(q).normal(size=200)
        page.queries.append(ShownQuery(f"query_{q}.mp4", frames, flow, scores, shown))
    return page


def chromium(page: Path, profile: Path, budget_ms: int, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` for ``budget_ms`` of virtual time; console messages go to stderr.
    The timeout only stops a hung browser."""
    command = [
        BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr",
        "--v=0", f"--virtual-time-budget={budget_ms}", "--window-size=1000,800", *args, page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def console_messages(done: subprocess.CompletedProcess) -> list[str]:
    """The page's console output (errors, CSP violations, logs): Chromium logs each as ``:CONSOLE``."""
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def report(tmp_path: Path) -> Path:
    page = page_of(queries=2, top=3)
    page.queries[0].top[0].clip_id = PAYLOAD
    page.queries[0].top[1].label = ATTRIBUTE_PAYLOAD
    page.queries[1].query_id = PAYLOAD
    path = tmp_path / "report.html"
    path.write_text(render_page(page), encoding="utf-8")
    return path


def test_the_page_loads_cleanly_and_its_clips_play(report: Path, tmp_path: Path) -> None:
    shots = []
    for budget in (1000, 1500):  # frames 8 and 12 of the 8 frames/s player
        shot = tmp_path / f"shot_{budget}.png"
        done = chromium(report, tmp_path / "profile", budget, f"--screenshot={shot}")
        assert console_messages(done) == []
        shots.append(np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16))
    first, later = shots
    assert first.shape == later.shape == (800, 1000, 3)
    assert first.std() > 10  # a page was drawn, not a blank
    changed = np.abs(first - later).max(axis=-1) > 0
    assert changed.mean() > 0.01  # the clips moved between the two times


def test_injected_names_run_nothing_and_show_as_text(report: Path, tmp_path: Path) -> None:
    done = chromium(report, tmp_path / "profile", 1000, "--dump-dom")
    assert console_messages(done) == []
    dom = done.stdout
    assert re.search(r"<title>test page</title>", dom), "the page's title was changed"
    assert dom.count("<script") == 1  # the player, as sent
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "<img src=" not in dom
    frame = re.search(r'<html[^>]* data-frame="(\d+)"', dom)
    assert frame and int(frame.group(1)) >= 4  # the player's clock ran
