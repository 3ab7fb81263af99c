"""The scorer's whole-index step and search index: made once by `mwga index`, stored in the index, used by
`mwga attribute` (which then gives the scores it gave when it computed the step itself)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mwga_plugins.scorers import cosine
from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig
from mwga_plugins.scorers.dot import DotScorer, DotScorerConfig
from mwga_plugins.scorers.trak import TrakScorer, TrakScorerConfig

from mwga_core.api.errors import DataError
from mwga_core.config.compose import compose
from mwga_core.retrieval import prepared_scoring
from mwga_core.retrieval.attribute import attribute, stored_scoring
from mwga_core.retrieval.index import index_corpus
from mwga_core.retrieval.prepared_scoring import (
    SCORING,
    load_prepared_scoring,
    store_prepared_scoring,
)
from mwga_core.storage.index_store import load_index

SCORERS = {
    "cosine_neighbours": (CosineScorer(CosineScorerConfig(name="cosine", neighbours=3)), {"neighbours": 3}),
    "cosine": (CosineScorer(CosineScorerConfig(name="cosine")), {}),
    "dot": (DotScorer(DotScorerConfig(name="dot")), {}),
    "trak": (TrakScorer(TrakScorerConfig(name="trak")), {}),
}


def scorer_config(name: str) -> dict:
    scorer, fields = SCORERS[name]
    return {"name": scorer.config.name, **fields}


def same_attribution(a, b) -> None:
    for name in ("top_rows", "top_scores", "votes", "selected", "selected_mean_scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("name", list(SCORERS))
def test_stored_scoring_attributes_exactly_as_computing_it(name, tmp_path: Path, ctx, host) -> None:
    scorer, _ = SCORERS[name]
    rng = np.random.default_rng(3)
    train = rng.standard_normal((2, 400, 16)).astype(np.float32)
    query = rng.standard_normal((2, 3, 16)).astype(np.float32)
    config = scorer_config(name)
    assert store_prepared_scoring(tmp_path, scorer, config, train, ctx)
    stored = load_prepared_scoring(tmp_path, scorer, config, train, host)
    assert stored is not None
    assert (stored.search is not None) == scorer.searchable_by_inner_product
    settings = {"query_ids": ["a", "b", "c"], "top_k": 7, "percentile": 90.0, "votes_k": 12}
    computed = attribute(query, train, scorer, ctx, **settings)
    same_attribution(attribute(query, train, scorer, ctx, **settings, prepared=stored), computed)


def test_attribute_does_not_augment_when_the_step_is_stored(tmp_path: Path, ctx, host, monkeypatch) -> None:
    scorer, _ = SCORERS["cosine_neighbours"]
    rng = np.random.default_rng(4)
    train = rng.standard_normal((1, 300, 8)).astype(np.float32)
    query = rng.standard_normal((1, 2, 8)).astype(np.float32)
    store_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, ctx)
    stored = load_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, host)
    expected = attribute(query, train, scorer, ctx, ["a", "b"], 5, 90.0, 10)

    def refuse(*args, **kwargs):
        raise AssertionError("the augmentation was computed again at attribute time")

    monkeypatch.setattr(cosine, "augment_with_neighbours", refuse)
    monkeypatch.setattr(cosine, "augment_approximately", refuse)
    same_attribution(attribute(query, train, scorer, ctx, ["a", "b"], 5, 90.0, 10, prepared=stored), expected)
    assert isinstance(stored.features, np.memmap)  # read from the index folder, not recomputed
    with pytest.raises(AssertionError, match="computed again"):  # the spies do catch a recomputation
        attribute(query, train, scorer, ctx, ["a", "b"], 5, 90.0, 10)


def test_the_record_is_reused_for_its_scorer_and_made_anew_for_another(tmp_path: Path, ctx, host) -> None:
    scorer, _ = SCORERS["cosine_neighbours"]
    train = np.random.default_rng(5).standard_normal((1, 120, 8)).astype(np.float32)
    assert store_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, ctx)
    assert not store_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, ctx)
    # another scorer config (or another N): what is stored is not for it
    other = {"name": "cosine", "neighbours": 2}
    assert load_prepared_scoring(tmp_path, scorer, other, train, host) is None
    assert (
        load_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train[:, :60], host)
        is None
    )
    two = CosineScorer(CosineScorerConfig(name="cosine", neighbours=2))
    assert store_prepared_scoring(tmp_path, two, other, train, ctx)
    record = json.loads((tmp_path / SCORING / "scoring.json").read_text())
    assert record["scorer"] == other and record["per_clip_scorer"]["neighbours"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [SCORING]  # no temporary folder left


def test_a_damaged_stored_file_is_a_one_line_error(tmp_path: Path, ctx, host) -> None:
    scorer, _ = SCORERS["cosine_neighbours"]
    train = np.random.default_rng(6).standard_normal((1, 50, 8)).astype(np.float32)
    store_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, ctx)
    (tmp_path / SCORING / "per_clip_features.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"per_clip_features\.npy: cannot be read .*mwga index"):
        load_prepared_scoring(tmp_path, scorer, scorer_config("cosine_neighbours"), train, host)


def test_search_vectors_beyond_float16_are_stored_as_float32(tmp_path: Path, ctx, host) -> None:
    scorer, _ = SCORERS["dot"]
    rng = np.random.default_rng(7)
    train = rng.standard_normal((1, 200, 8)).astype(np.float32)
    train[0, 150] *= 1e6  # a dot-product search vector float16 cannot hold
    query = rng.standard_normal((1, 2, 8)).astype(np.float32)
    store_prepared_scoring(tmp_path, scorer, scorer_config("dot"), train, ctx)
    stored = load_prepared_scoring(tmp_path, scorer, scorer_config("dot"), train, host)
    assert stored.search.kind == "flat"
    same_attribution(
        attribute(query, train, scorer, ctx, ["a", "b"], 5, 90.0, 10, prepared=stored),
        attribute(query, train, scorer, ctx, ["a", "b"], 5, 90.0, 10),
    )
    small = np.random.default_rng(8).standard_normal((1, 70, 8)).astype(np.float32)
    store_prepared_scoring(tmp_path, scorer, scorer_config("dot"), small, ctx)
    assert (
        load_prepared_scoring(tmp_path, scorer, scorer_config("dot"), small, host).search.kind == "flat_fp16"
    )


def test_mwga_index_stores_the_step_and_attribute_uses_it(
    write_clips, tmp_path: Path, ctx, host, console_text, monkeypatch
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 18)
    overrides = [
        "method=ours_simulated",
        "scorer=cosine_neighbours",  # the default method's scorer
        "dataset.num_frames=8",
        "dataset.size=[24]",
        "projection.dim=16",
    ]
    cfg = compose(overrides, host=host, config_name="index")
    assert cfg.scorer.neighbours == 5
    index_corpus(corpus, out, cfg, ctx, host=host)
    index = load_index(out)
    data = out / index.manifest["data"]
    record = json.loads((data / SCORING / "scoring.json").read_text())
    assert record["scorer"] == index.manifest["config"]["scorer"] and record["count"] == 18

    scorer = host.build("scorer", index.manifest["config"]["scorer"])
    query = np.random.default_rng(9).standard_normal(index.features[:, :2].shape).astype(np.float32)
    before = attribute(query, index.features, scorer, ctx, ["a", "b"], 5, 90.0, 4)
    stored = stored_scoring(index, scorer, ctx, host)
    same_attribution(
        attribute(query, index.features, scorer, ctx, ["a", "b"], 5, 90.0, 4, prepared=stored), before
    )
    assert "note:" not in console_text.getvalue()

    # a second run with nothing new reuses the stored step; one with another scorer makes it anew
    made = []
    real = prepared_scoring.prepare_scoring
    monkeypatch.setattr(prepared_scoring, "prepare_scoring", lambda *a: made.append(1) or real(*a))
    index_corpus(corpus, out, cfg, ctx, host=host)
    assert made == []
    index_corpus(
        corpus,
        out,
        compose([*overrides, "scorer.neighbours=2"], host=host, config_name="index"),
        ctx,
        host=host,
    )
    assert made == [1]
    assert json.loads((data / SCORING / "scoring.json").read_text())["scorer"]["neighbours"] == 2


def test_an_index_made_before_the_step_was_stored_still_attributes(
    write_clips, tmp_path: Path, ctx, host, console_text
) -> None:
    import shutil

    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 12)
    overrides = [
        "method=ours_simulated",
        "scorer=cosine_neighbours",
        "dataset.num_frames=8",
        "dataset.size=[24]",
    ]
    index_corpus(corpus, out, compose(overrides, host=host, config_name="index"), ctx, host=host)
    index = load_index(out)
    shutil.rmtree(out / index.manifest["data"] / SCORING)  # as an older mwga left it
    scorer = host.build("scorer", index.manifest["config"]["scorer"])
    assert stored_scoring(index, scorer, ctx, host) is None
    assert "holds no stored scoring step" in console_text.getvalue()
    query = np.random.default_rng(10).standard_normal(index.features[:, :1].shape).astype(np.float32)
    result = attribute(query, index.features, scorer, ctx, ["a"], 3, 90.0, 2, prepared=None)
    assert result.top_rows.shape == (1, 3)
