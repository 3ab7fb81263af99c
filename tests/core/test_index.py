"""`mwga index`: a persistent index that only computes new clips, drops removed ones and resumes after a kill."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import PATTERNS
from mwga_plugins.gradients.simulated import SimulatedGradient, SimulatedGradientConfig

from mwga_core import hookimpl
from mwga_core.api.clips import AnalysedClips
from mwga_core.api.errors import DataError
from mwga_core.config.compose import compose
from mwga_core.retrieval.index import IndexMismatchError, index_corpus
from mwga_core.storage.index_store import load_index


class Killed(Exception):
    """Stands in for the process dying mid-index."""


#: clip ids the counting source computed, over all instances; and when to "die"
COMPUTED: list[str] = []
KILL_AFTER_CALLS = {"value": -1}


@dataclass
class CountingConfig(SimulatedGradientConfig):
    virtual_dim: int = 64


class CountingGradient(SimulatedGradient):
    """The simulated gradient, recording every clip it computes; can die after some calls."""

    def iter_gradients(self, clips: AnalysedClips, ctx) -> Iterator:
        KILL_AFTER_CALLS["value"] -= 1
        if KILL_AFTER_CALLS["value"] == 0:
            raise Killed("killed")
        COMPUTED.extend(clips.clips.ids)
        yield from super().iter_gradients(clips, ctx)


class CountingPlugin:
    @hookimpl
    def mwga_register_gradient_sources(self, register):
        register("counting", CountingGradient, CountingConfig, description="counts clips")


@pytest.fixture
def make_index(host, ctx, tmp_path: Path):
    host.add_plugin(CountingPlugin(), "counting")
    COMPUTED.clear()
    KILL_AFTER_CALLS["value"] = -1

    def run(corpus: Path, out: Path, *overrides: str, **options):
        cfg = compose(
            [
                "gradient=counting",
                "dataset.num_frames=8",
                "dataset.size=[24]",
                "projection.dim=16",
                *overrides,
            ],
            host=host,
            config_name="index",
        )
        return index_corpus(corpus, out, cfg, ctx, host=host, **options)

    return run


def test_adding_clips_computes_only_the_new_ones(make_index, write_clips, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 12)
    first = make_index(corpus, out, "dataset.labels=folders", batch_size=5)
    assert (first.total, first.computed, first.reused) == (12, 12, 0)
    assert len(COMPUTED) == 12
    before = load_index(out)
    assert before.features.shape == (1, 12, 16) and before.descriptors.shape[0] == 12
    assert before.clips[0]["label"] == "diagonal_slide"

    write_clips(corpus, 12, 4)
    COMPUTED.clear()
    second = make_index(corpus, out, "dataset.labels=folders", batch_size=5)
    assert (second.total, second.computed, second.reused) == (16, 4, 12)
    assert sorted(COMPUTED) == sorted(f"{PATTERNS[i % 6]}/clip_{i:03d}.npy" for i in range(12, 16))
    after = load_index(out)
    old_rows = [after.ids.index(clip_id) for clip_id in before.ids]
    np.testing.assert_array_equal(after.features[:, old_rows], before.features)

    # batching and increments change nothing: a fresh index of the same 16 clips is bit-identical
    fresh = make_index(corpus, tmp_path / "fresh", "dataset.labels=folders", batch_size=100)
    assert fresh.computed == 16
    np.testing.assert_array_equal(load_index(tmp_path / "fresh").features, after.features)
    assert load_index(tmp_path / "fresh").ids == after.ids

    for clip_id in after.ids[:2]:
        (corpus / clip_id).unlink()
    COMPUTED.clear()
    third = make_index(corpus, out, "dataset.labels=folders")
    assert (third.total, third.computed, third.removed) == (14, 0, 2) and COMPUTED == []
    assert load_index(out).ids == after.ids[2:]
    assert sorted(p.name for p in out.iterdir()) == ["data-000003", "manifest.json"]


def test_an_interrupted_index_resumes_from_its_finished_batches(
    make_index, write_clips, tmp_path: Path
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 12)
    KILL_AFTER_CALLS["value"] = 3  # dies in the third batch
    with pytest.raises(Killed):
        make_index(corpus, out, batch_size=4)
    assert len(COMPUTED) == 8
    assert len(list((out / "shards").glob("shard-*"))) == 2
    assert not (out / "manifest.json").exists()
    COMPUTED.clear()
    resumed = make_index(corpus, out, batch_size=4)
    assert (resumed.computed, resumed.reused) == (4, 8) and len(COMPUTED) == 4
    make_index(corpus, tmp_path / "fresh", batch_size=12)
    np.testing.assert_array_equal(load_index(out).features, load_index(tmp_path / "fresh").features)


def test_an_edited_component_module_recomputes_every_row(
    make_index, write_clips, tmp_path: Path, ctx, console_text, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows (consolidated or in shards) are reused only under the same code hash of the components."""
    from mwga_core.storage import keys

    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    KILL_AFTER_CALLS["value"] = 2  # leaves one shard of 4 clips behind
    with pytest.raises(Killed):
        make_index(corpus, out, "projection=sparse_jl", batch_size=4)
    assert len(list((out / "shards").glob("shard-*"))) == 1
    real_hash = keys.module_source_hash
    # as if sparse_jl.py had been edited: its source hash changes, so the shard is not reused
    monkeypatch.setattr(
        keys, "module_source_hash", lambda name: real_hash(name) + ("x" if name.endswith("sparse_jl") else "")
    )
    assert make_index(corpus, out, "projection=sparse_jl", batch_size=4).computed == 6
    assert make_index(corpus, out, "projection=sparse_jl", batch_size=4).computed == 0
    monkeypatch.setattr(keys, "module_source_hash", real_hash)
    edited = make_index(corpus, out, "projection=sparse_jl", batch_size=4)
    assert (edited.computed, edited.reused) == (6, 0)
    assert "code" in console_text.getvalue() and "recomputing every clip" in console_text.getvalue()


def test_another_config_is_refused_unless_rebuilt(make_index, write_clips, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    make_index(corpus, out)
    with pytest.raises(IndexMismatchError, match="descriptor.name"):
        make_index(corpus, out, "descriptor=hoof_grid")
    rebuilt = make_index(corpus, out, "descriptor=hoof_grid", rebuild=True)
    assert rebuilt.computed == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["descriptor"]["name"] == "hoof_grid"
    assert manifest["identity"]["gradient"]["name"] == "counting"
    assert manifest["mwga_version"] and manifest["count"] == 6


def test_skipped_files_are_listed_and_retried(make_index, write_clips, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    (corpus / "broken.npy").write_bytes(b"garbage")
    summary = make_index(corpus, out, "dataset.on_error=skip")
    assert summary.total == 6 and [s["file"] for s in summary.skipped] == [str(corpus / "broken.npy")]
    assert json.loads((out / "manifest.json").read_text())["skipped"][0]["file"] == str(corpus / "broken.npy")
    (corpus / "broken.npy").unlink()
    write_clips(corpus, 6, 1)
    COMPUTED.clear()
    again = make_index(corpus, out, "dataset.on_error=skip")
    assert (again.total, again.computed, again.skipped) == (7, 1, [])


# --- --out and --rebuild never lose data (issue 14, item 1) -------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_folder_that_is_not_an_index_is_refused_and_kept(
    make_index, write_clips, tmp_path: Path, rebuild: bool
) -> None:
    corpus, thesis = tmp_path / "corpus", tmp_path / "thesis"
    write_clips(corpus, 0, 6)
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    before = _snapshot(thesis)
    with pytest.raises(DataError, match=r"is not an mwga index \(it holds chapter1.tex\)"):
        make_index(corpus, thesis, rebuild=rebuild)
    assert _snapshot(thesis) == before


@pytest.mark.parametrize("where", ["corpus", "parent", "inside"])
def test_an_out_folder_overlapping_the_corpus_is_refused(
    make_index, write_clips, tmp_path: Path, where: str
) -> None:
    corpus = tmp_path / "corpus"
    write_clips(corpus, 0, 6)
    out = {"corpus": corpus, "parent": tmp_path, "inside": corpus / "index"}[where]
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match="corpus"):
        make_index(corpus, out, rebuild=True)
    assert _snapshot(tmp_path) == before


def test_rebuild_with_a_missing_corpus_keeps_the_old_index(make_index, write_clips, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    make_index(corpus, out)
    before = _snapshot(out)
    with pytest.raises(DataError, match="not a folder of clips"):
        make_index(tmp_path / "no_such_folder", out, rebuild=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no clips found"):
        make_index(tmp_path / "empty", out, rebuild=True)
    assert _snapshot(out) == before


def test_rebuild_of_an_index_starts_over(make_index, write_clips, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    make_index(corpus, out)
    COMPUTED.clear()
    again = make_index(corpus, out, rebuild=True)
    assert again.computed == 6 and len(COMPUTED) == 6


def test_out_pointing_at_a_file_is_refused(make_index, write_clips, tmp_path: Path) -> None:
    corpus, target = tmp_path / "corpus", tmp_path / "notes.txt"
    write_clips(corpus, 0, 6)
    target.write_text("keep me")
    with pytest.raises(DataError, match="is a file, not an index folder"):
        make_index(corpus, target, rebuild=True)
    assert target.read_text() == "keep me"


def test_a_non_finite_feature_row_is_refused_at_load_and_recomputed_by_index(
    make_index, write_clips, tmp_path: Path
) -> None:
    """A NaN row in features.npy used to score 0.0 and survive re-indexing (issue 14, item 3)."""
    corpus, out = tmp_path / "corpus", tmp_path / "index"
    write_clips(corpus, 0, 6)
    make_index(corpus, out)
    good = load_index(out).features.copy()
    data = out / json.loads((out / "manifest.json").read_text())["data"]
    damaged = np.load(data / "features.npy")
    damaged[:, 2] = np.nan
    np.save(data / "features.npy", damaged)
    with pytest.raises(DataError, match="non-finite features"):
        load_index(out)
    COMPUTED.clear()
    again = make_index(corpus, out)
    assert again.computed == 1 and len(COMPUTED) == 1
    np.testing.assert_array_equal(load_index(out).features, good)
