"""`mwga attribute --html`: report.html from the command line, with every top clip, escaped names, and
all of the outputs or none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
import pytest

from mwga_core.api.errors import DataError

SMALL = ["method=ours_simulated", "dataset.num_frames=8", "dataset.size=[24]"]
#: a clip whose id is a script tag: the folder "<script>alert(1)<" holds "script>.npy"
EVIL = "<script>alert(1)</script>.npy"


def mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mwga *args`` in a subprocess with its own cache; the timeout only stops a hung process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    command = [sys.executable, "-m", "mwga_core.cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with ``index``, made from 12 benchmark clips and one named like a script tag."""
    from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, render_clip

    work = tmp_path_factory.mktemp("attribute-html")
    for i in range(13):
        frames, _ = render_clip(
            PATTERNS[i % 6], np.random.default_rng(i), SyntheticConfig(num_frames=8, size=24)
        )
        path = work / "corpus" / (EVIL if i == 12 else f"{PATTERNS[i % 6]}/clip_{i:03d}.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.rint(frames * 255).astype(np.uint8))
    ok(mwga("index", "corpus", "--out", "index", *SMALL, cwd=work))
    return work


def test_the_report_shows_every_top_clip_and_escapes_names(indexed: Path, tmp_path: Path) -> None:
    queries = [str(indexed / "corpus" / EVIL), str(indexed / "corpus" / "zoom_in" / "clip_004.npy")]
    out = tmp_path / "out"
    ok(mwga("attribute", "index", *queries, "--top-k", "13", "--html", "--out", str(out), cwd=indexed))
    html = (out / "report.html").read_text(encoding="utf-8")
    print(f"report.html, 2 queries x top 13 at 24x24x8: {len(html.encode()) / 1e3:.0f} kB")
    document = json.loads((out / "attribution.json").read_text())
    for entry in document["queries"]:
        assert escape(entry["query"]) in html
        for top in entry["top"]:
            assert f'<span class="id">{escape(top["clip_id"])}</span>' in html
    assert EVIL in {top["clip_id"] for top in document["queries"][0]["top"]}  # every clip is listed
    assert html.count("<script") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;.npy" in html
    assert "Majority-vote subset" in html  # two queries vote
    assert "no per-region map" in html  # the simulated gradient has no spatial cells
    selected = json.loads((out / "selected_subset.json").read_text())["clips"]
    assert html.count('data-frames="8"') == 2 + 2 * 13 + len(selected)  # queries, top clips, vote subset
    assert html.count('data-frames="7"') == 2  # each query's flow


def test_a_query_that_cannot_be_attributed_leaves_no_report(indexed: Path, tmp_path: Path) -> None:
    still = tmp_path / "still.npy"
    np.save(still, np.full((8, 24, 24), 120, dtype=np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "attribution.json").write_text("earlier\n")
    good = str(indexed / "corpus" / "zoom_in" / "clip_004.npy")
    done = mwga("attribute", "index", good, str(still), "--html", "--out", str(out), cwd=indexed)
    assert done.returncode == 2 and "no motion" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["attribution.json"]
    assert (out / "attribution.json").read_text() == "earlier\n"


def test_a_report_that_fails_leaves_no_output_at_all(
    indexed: Path, tmp_path: Path, host, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mwga_core.cli.attribute import attribute_command
    from mwga_core.reporting import html_report

    def broken(page):
        raise DataError("the report cannot be drawn")

    monkeypatch.setattr(html_report, "render_page", broken)
    monkeypatch.setenv("MWGA_CACHE_DIR", str(indexed / "cache"))
    out = tmp_path / "out"
    query = str(indexed / "corpus" / "zoom_in" / "clip_004.npy")
    with pytest.raises(DataError, match="cannot be drawn"):
        attribute_command([str(indexed / "index"), query, "--html", "--out", str(out)])
    assert not out.exists() or not any(out.iterdir())  # not even attribution.json
