"""``mwga cache info|clear``: per-stage listing, clearing a stage, clearing old entries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mwga_core.cli.main import main
from mwga_core.storage.stage_cache import StageCache

DAY = 86400


def age(path: Path, days: float) -> None:
    """Set the modification time of a folder and everything in it to ``days`` ago."""
    stamp = time.time() - days * DAY
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(Path(folder) / name, (stamp, stamp))
        os.utime(folder, (stamp, stamp))


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache with 2 flows entries (one 10 days old), 1 scores entry, 1 features entry and a model."""
    monkeypatch.setenv("MWGA_CACHE_DIR", str(tmp_path))
    cache = StageCache(tmp_path)
    cache.save("flows", "new", {"flows": np.zeros(1000, dtype=np.float32)})
    cache.save("flows", "old", {"flows": np.zeros(2000, dtype=np.float32)})
    cache.save("scores", "s", {"scores": np.zeros((2, 3))})
    age(cache.path("flows", "old"), 10)
    cache.save("features", "abc", {"features": np.zeros((1, 2, 625), dtype=np.float32)})
    (tmp_path / "models" / "m1").mkdir(parents=True)
    (tmp_path / "models" / "m1" / "model.json").write_text("{}")
    return tmp_path


def info(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["cache", "info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_lists_every_stage_and_the_other_caches(filled: Path, capsys) -> None:
    data = info(capsys)
    caches = {c["name"]: c for c in data["caches"]}
    assert data["dir"] == str(filled)
    assert list(caches)[:6] == ["dataset", "flows", "descriptors", "gradients", "features", "scores"]
    assert caches["flows"]["entries"] == 2 and caches["dataset"]["entries"] == 0
    assert caches["flows"]["bytes"] > 3000 * 4  # both arrays plus manifests
    assert caches["flows"]["oldest"] < caches["flows"]["newest"]
    assert caches["features"]["entries"] == 1 and caches["features"]["bytes"] > 5000
    assert caches["models"]["entries"] == 1
    assert data["total_bytes"] == sum(c["bytes"] for c in caches.values())


def test_info_prints_a_table(filled: Path, capsys) -> None:
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "flows" in out and "features" in out and "total" in out


def test_clear_one_stage_keeps_the_others(filled: Path, capsys) -> None:
    assert main(["cache", "clear", "--stage", "flows"]) == 0
    assert "flows: removed 2 entries" in capsys.readouterr().out
    caches = {c["name"]: c for c in info(capsys)["caches"]}
    assert caches["flows"]["entries"] == 0
    assert caches["scores"]["entries"] == 1 and caches["features"]["entries"] == 1


def test_clear_older_than_removes_only_old_entries(filled: Path, capsys) -> None:
    assert main(["cache", "clear", "--older-than", "5", "--json"]) == 0
    freed = json.loads(capsys.readouterr().out)["freed"]
    assert freed["flows"]["entries"] == 1 and freed["scores"]["entries"] == 0
    assert (
        not (filled / "stages" / "flows" / "old").exists() and (filled / "stages" / "flows" / "new").exists()
    )


def test_clear_all_empties_every_cache_and_reports_the_bytes(filled: Path, capsys) -> None:
    before = info(capsys)["total_bytes"]
    assert main(["cache", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_bytes"] == before
    assert info(capsys)["total_bytes"] == 0


def test_an_unknown_stage_is_a_user_error(filled: Path, capsys) -> None:
    assert main(["cache", "clear", "--stage", "flow"]) == 2
    assert "flows" in capsys.readouterr().err  # the allowed names are listed


def test_clear_removes_unheld_partial_features_and_free_locks_only(filled: Path, capsys) -> None:
    from mwga_core.storage.atomic import entry_lock

    features = filled / "stages" / "features"
    for key in ("held", "left"):  # features being filled: one by a live run, one by a killed run
        (features / f".partial-{key}").mkdir()
        (features / f".partial-{key}" / "features.npy").write_bytes(b"x" * 100)
    (features / ".abc.lock").touch()
    with entry_lock(features / "held"):
        assert main(["cache", "clear", "--json"]) == 0
        remaining = sorted(p.name for p in features.iterdir())
    assert remaining == [".held.lock", ".partial-held"]


def test_clear_removes_a_file_where_a_cache_folder_should_be(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MWGA_CACHE_DIR", str(tmp_path))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "flows").write_text("not a folder")
    assert main(["cache", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["freed"]["flows"]["entries"] == 1
    assert not (tmp_path / "stages" / "flows").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root deletes files in read-only folders")
def test_clear_of_a_read_only_cache_reports_what_it_could_not_delete(filled: Path, capsys) -> None:
    flows = filled / "stages" / "flows"
    flows.chmod(0o555)
    try:
        assert main(["cache", "clear", "--stage", "flows"]) == 1
    finally:
        flows.chmod(0o755)
    out = capsys.readouterr().out
    assert "freed 0 B (0 entries)" in out and "could not delete 2 entries" in out
