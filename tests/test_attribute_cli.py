"""`mwga index` + `mwga attribute` end to end on real mp4 files, and the retrieval path against full scoring."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "make_videos.py"
MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)


def load_make_videos():
    spec = importlib.util.spec_from_file_location("make_videos", FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mwga(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cwd / "cache")
    # the timeout only stops a hung process: never tight, a loaded machine is many times slower
    done = subprocess.run([MWGA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_index_and_attribute_sixty_videos(tmp_path: Path) -> None:
    videos = tmp_path / "vids"
    load_make_videos().write_corpus(videos, clips=60)
    index = tmp_path / "index"
    done = mwga(
        "index", str(videos / "train"), "--out", str(index), "method=ours_simulated", "descriptor=hoof_grid",
        f"dataset.labels={videos / 'labels.csv'}", cwd=tmp_path,
    )  # fmt: skip
    assert "indexed 60 clips" in done.stdout and "60 computed" in done.stdout
    again = mwga(
        "index", str(videos / "train"), "--out", str(index), "method=ours_simulated", "descriptor=hoof_grid",
        cwd=tmp_path,
    )  # fmt: skip
    assert "0 computed, 60 reused" in again.stdout

    out = tmp_path / "attribution"
    queries = [str(videos / "queries" / "horizontal_pan.mp4"), str(videos / "queries" / "horizontal_pan.mp4")]
    queries[1] = str(videos / "queries" / "vertical_tilt.mp4")
    done = mwga("attribute", str(index), *queries, "--top-k", "10", "--out", str(out), cwd=tmp_path)
    assert "horizontal_pan/clip_" in done.stdout
    document = json.loads((out / "attribution.json").read_text())
    pan, tilt = document["queries"]
    assert pan["query"].endswith("horizontal_pan.mp4") and len(pan["top"]) == 10
    scores = [entry["score"] for entry in pan["top"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(entry["label"] == "horizontal_pan" for entry in pan["top"]) >= 7
    assert sum(entry["label"] == "vertical_tilt" for entry in tilt["top"]) >= 7
    with open(out / "attribution.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    sheets = sorted(out.glob("contact_*.png"))
    assert len(sheets) == 2 and all(sheet.stat().st_size > 10_000 for sheet in sheets)
    selected = json.loads((out / "selected_subset.json").read_text())
    assert 1 <= len(selected["clips"]) <= 6  # votes_k = ceil(0.1 * 60)
    votes = [c["votes"] for c in selected["clips"]]
    assert votes == sorted(votes, reverse=True)
    assert (out / "selected_subset.txt").read_text().split() == [c["clip_id"] for c in selected["clips"]]


@pytest.mark.parametrize("scorer_name", ["cosine", "dot", "cosine_neighbours"])
def test_the_faiss_search_ranks_like_the_full_score_matrix(scorer_name: str, ctx) -> None:
    # cosine with neighbours scores a clip with the help of other clips: attribute() must still rank
    # exactly like the full score matrix, although it searches and rescores subsets.
    from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig
    from mwga_plugins.scorers.dot import DotScorer, DotScorerConfig

    from mwga_core.retrieval.attribute import attribute, search

    scorer = {
        "cosine": CosineScorer(CosineScorerConfig(name="cosine")),
        "dot": DotScorer(DotScorerConfig(name="dot")),
        "cosine_neighbours": CosineScorer(CosineScorerConfig(name="cosine", neighbours=3)),
    }[scorer_name]
    rng = np.random.default_rng(0)
    train = rng.standard_normal((2, 300, 24)).astype(np.float32)
    query = rng.standard_normal((2, 3, 24)).astype(np.float32)
    full = scorer.score(query, train, ctx)
    per_clip_scorer, per_clip_train = scorer.per_clip(train, ctx)
    rows, scores = search(query, per_clip_train, per_clip_scorer, ctx, 15)
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :15])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-12)

    result = attribute(query, train, scorer, ctx, ["a", "b", "c"], top_k=5, percentile=90.0, votes_k=10)
    np.testing.assert_array_equal(result.top_rows, rows[:, :5])
    above = full >= np.sort(full, axis=1)[:, [-30]]  # each query's top 30 = 10% of 300
    np.testing.assert_array_equal(result.votes, above.sum(axis=0))
    mean = full.mean(axis=0)
    expected = sorted(np.flatnonzero(above.sum(axis=0)), key=lambda i: (-above[:, i].sum(), -mean[i], i))[:10]
    assert result.selected.tolist() == expected


def test_any_scorer_that_says_it_is_an_inner_product_is_searched_with_faiss(ctx, monkeypatch) -> None:
    """The capability, not a list of names: a third-party scorer declaring it gets the FAISS search."""
    from mwga_core.api.scorers import Scorer, ScorerConfig
    from mwga_core.retrieval import faiss_index
    from mwga_core.retrieval.attribute import search

    class ScaledDot(Scorer):
        searchable_by_inner_product = True

        def search_vectors(self, features: np.ndarray) -> np.ndarray:
            return 3.0 * features

        def score(self, query, train, ctx):
            return 9.0 * np.einsum("kqp,knp->qn", query.astype(np.float64), train.astype(np.float64))

    built = []
    original = faiss_index.build_index
    monkeypatch.setattr(faiss_index, "build_index", lambda *a, **k: built.append(1) or original(*a, **k))
    rng = np.random.default_rng(1)
    train = rng.standard_normal((1, 200, 8)).astype(np.float32)
    query = rng.standard_normal((1, 2, 8)).astype(np.float32)
    scorer = ScaledDot(ScorerConfig(name="scaled_dot"))
    rows, scores = search(query, train, scorer, ctx, 10)
    full = scorer.score(query, train, ctx)
    assert built == [1]
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-12)


def test_a_dataset_that_reads_no_clip_files_cannot_be_indexed(tmp_path: Path, capsys) -> None:
    from mwga_core.cli.main import main

    (tmp_path / "corpus").mkdir()
    args = ["index", str(tmp_path / "corpus"), "--out", str(tmp_path / "index"), "method=ours_simulated"]
    assert main([*args, "dataset=synthetic"]) == 2
    error = capsys.readouterr().err
    assert "dataset='synthetic' is not allowed" in error and "ClipReader" in error
    assert not (tmp_path / "index" / "manifest.json").exists()
