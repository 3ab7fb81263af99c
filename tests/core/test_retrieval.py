"""FAISS top-k retrieval: exact kinds match a numpy ranking, IVF kinds are seeded, errors name values."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.retrieval import faiss_index as retrieval
from mwga_core.retrieval.faiss_index import RetrievalIndex, build_index

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def one_faiss_thread() -> Iterator[None]:
    # OpenMP threads spinning against each other on a loaded 2-core machine make k-means crawl.
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def clustered_features(count: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Rows around 20 centres, like clip features that cluster by motion. Shape: (count, dim) float16."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)) * 3
    rows = centres[rng.integers(0, 20, count)] + rng.standard_normal((count, dim))
    return rows.astype(np.float16)


def exact_top_k(queries: np.ndarray, rows: np.ndarray, k: int, cosine: bool = False) -> np.ndarray:
    rows, queries = rows.astype(np.float64), queries.astype(np.float64)
    if cosine:
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(queries @ rows.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["flat", "flat_fp16"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_exact_kinds_return_the_numpy_top_k(kind, metric):
    rows = clustered_features()
    queries = rows[[3, 500, 1999]].astype(np.float32) + 0.1
    scores, indices = build_index(rows, kind=kind, metric=metric).search(queries, 10)
    assert scores.shape == indices.shape == (3, 10) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, exact_top_k(queries, rows, 10, cosine=metric == "cosine"))
    assert (np.diff(scores, axis=1) <= 0).all()
    expected = queries[0] @ rows[indices[0, 0]].astype(np.float32)
    if metric == "ip":
        assert scores[0, 0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["flat", "flat_fp16"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_a_search_split_over_row_ranges_equals_one_scan(kind, metric, monkeypatch):
    monkeypatch.setattr(retrieval, "SPLIT_MIN_ROWS", 100)
    rows = clustered_features(count=2001)
    rows[1500] = rows[20]  # a tie across ranges: the lower row must come first
    index = build_index(rows, kind=kind, metric=metric)
    splits = []
    split_search = RetrievalIndex._search_row_ranges
    monkeypatch.setattr(
        RetrievalIndex, "_search_row_ranges", lambda self, *a: splits.append(a[2]) or split_search(self, *a)
    )
    queries = np.concatenate([rows[[20, 999]].astype(np.float32) + 0.1, np.ones((1, 32), np.float32)])
    for query in queries:
        one_scan = index.search(query, 15, threads=1)
        for threads in (2, 3):
            split = index.search(query, 15, threads=threads)
            np.testing.assert_array_equal(split[0], one_scan[0])  # bit-identical scores
            values, counts = np.unique(split[0][0], return_counts=True)
            ties = np.isin(split[0][0], values[counts > 1])
            np.testing.assert_array_equal(split[1][0][~ties], one_scan[1][0][~ties])
            assert set(split[1][0][ties]) == set(one_scan[1][0][ties])
    found = index.search(rows[20].astype(np.float32), 15, threads=2)[1][0].tolist()
    assert found.index(20) + 1 == found.index(1500)
    assert splits == [2, 3] * 3 + [2]  # one query, fewer than threads: split; threads=1: one scan
    index.search(queries, 5, threads=2)  # 3 queries >= 2 threads: FAISS parallelises over queries
    assert len(splits) == 7
    with pytest.raises(ConfigValueError, match=r"threads=0"):
        index.search(queries, 5, threads=0)


def test_cosine_does_not_change_the_callers_arrays():
    rows = clustered_features().astype(np.float32)
    copy = rows.copy()
    build_index(rows, metric="cosine").search(rows[:2], 3)
    np.testing.assert_array_equal(rows, copy)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_kinds_are_seeded_and_find_the_near_duplicate(kind):
    rows = clustered_features()
    queries = rows[[7, 70, 700]].astype(np.float32)
    first = build_index(rows, kind=kind, nlist=8, nprobe=4, m=8, seed=3).search(queries, 5)
    second = build_index(rows, kind=kind, nlist=8, nprobe=4, m=8, seed=3).search(queries, 5)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0], second[0])
    recall = np.mean(
        [len(set(a) & set(b)) / 5 for a, b in zip(first[1], exact_top_k(queries, rows, 5), strict=True)]
    )
    assert recall >= 0.4


def test_save_and_load_give_the_same_answers(tmp_path):
    rows = clustered_features()
    index = build_index(rows, kind="ivf", metric="cosine", nlist=8, nprobe=3)
    index.save(tmp_path / "clips.faiss")
    loaded = RetrievalIndex.load(tmp_path / "clips.faiss")
    assert (loaded.kind, loaded.metric, loaded.dim, loaded.count, loaded.nprobe) == (
        "ivf",
        "cosine",
        32,
        2000,
        3,
    )
    for a, b in zip(index.search(rows[:4], 7), loaded.search(rows[:4], 7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_add_continues_the_ids():
    rows = clustered_features()
    index = build_index(rows[:0].astype(np.float32), kind="flat")
    index.add(rows[:1000])
    index.add(rows[1000:])
    _, indices = index.search(rows[1500:1501], 1)
    np.testing.assert_array_equal(indices, exact_top_k(rows[1500:1501], rows, 1))


def test_bad_requests_name_the_value_and_the_allowed_range(tmp_path):
    rows = clustered_features(count=50)
    index = build_index(rows)
    with pytest.raises(ConfigValueError, match=r"k=51 .*\[1, 50\].*N=50"):
        index.search(rows[:1], 51)
    with pytest.raises(ConfigValueError, match=r"k=0"):
        index.search(rows[:1], 0)
    with pytest.raises(DataError, match="queries have 16 dims but the index holds 32-dim rows"):
        index.search(np.zeros((2, 16), np.float32), 3)
    with pytest.raises(DataError, match="empty"):
        build_index(np.zeros((0, 32), np.float32)).search(rows[:1], 1)
    with pytest.raises(ConfigValueError, match=r"kind='hnsw'"):
        build_index(rows, kind="hnsw")
    with pytest.raises(ConfigValueError, match=r"nlist=51 .*\[1, 50\]"):
        build_index(rows, kind="ivf", nlist=51)
    with pytest.raises(ConfigValueError, match=r"m=5 .*divisor .*P=32"):
        build_index(clustered_features(count=300), kind="ivfpq", nlist=4, m=5)
    with pytest.raises(DataError, match="row 2 holds NaN"):
        build_index(np.where(np.arange(50)[:, None] == 2, np.nan, rows.astype(np.float32)))
    with pytest.raises(DataError, match=r"missing\.faiss does not exist"):
        RetrievalIndex.load(tmp_path / "missing.faiss")
