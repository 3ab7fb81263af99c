"""Top-k retrieval over clip features with FAISS, for indexed corpora too large for a full score matrix.

The pipeline's scorers produce the full (Q, N) score matrix, which is right for the benchmark corpus but
not for a million-clip index: :func:`build_index` puts the (N, P) feature rows in a FAISS index and
:meth:`RetrievalIndex.search` returns only the top k per query.

Index kinds (``kind``):
    flat:      exact inner product over float32 copies of the rows (``IndexFlatIP``), 4 P bytes per clip.
               The default; batched queries run as one BLAS matrix product.
    flat_fp16: exact inner product over the rows stored as float16 (``IndexScalarQuantizer``, QT_fp16),
               2 P bytes per clip. Scores equal ``flat`` up to float16 rounding of the stored rows, and
               are bit-identical to ``flat`` on features that were already float16.
    ivf:       inverted lists (``IndexIVFFlat``): the rows are clustered into ``nlist`` cells by seeded
               k-means and a query scans only the ``nprobe`` nearest cells. Approximate; 4 P + 8 bytes.
    ivfpq:     inverted lists over product-quantised rows (``IndexIVFPQ``, ``m`` sub-quantisers of 8 bits),
               m + 8 bytes per clip. Approximate, smallest.

Metrics (``metric``): ``ip`` (raw inner product) or ``cosine`` (rows and queries L2-normalised, then inner
product; a zero row stays zero and scores 0).

Threads: FAISS parallelises an exact search over queries, so a single query would scan every row on one
core. When a flat kind is searched with fewer queries than threads (and holds at least
``SPLIT_MIN_ROWS`` rows), :meth:`RetrievalIndex.search` instead splits the rows into one contiguous range
per thread, scans each range in its own thread (FAISS's ``IDSelectorRange`` over the same storage: no
copy, no extra memory, the saved file unchanged) and merges the per-range top k. The scores are those of
the single scan; among equal scores the lower row comes first.

faiss is imported inside functions: this module must not slow down ``mwga --help``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError

KINDS = ("flat", "flat_fp16", "ivf", "ivfpq")
METRICS = ("ip", "cosine")
FORMAT_VERSION = 1
#: rows converted to float32 at a time when adding, so a float16 corpus never exists whole as float32
ADD_CHUNK_ROWS = 65536
#: training rows per IVF cell (k-means subsample); FAISS warns below 39
TRAIN_ROWS_PER_LIST = 64
#: fewest rows for which a search of fewer queries than threads is split into per-thread row ranges
SPLIT_MIN_ROWS = 65536


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise MwgaUserError("retrieval needs FAISS: pip install faiss-cpu") from None
    return faiss


def _as_rows(array: Any, what: str) -> np.ndarray:
    rows = np.asarray(array)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (rows, P); got shape {rows.shape}")
    if rows.dtype not in (np.float16, np.float32, np.float64):
        raise DataError(f"{what} must be float16, float32 or float64; got {rows.dtype}")
    return rows


def _prepared(rows: np.ndarray, metric: str) -> np.ndarray:
    """A contiguous float32 copy of ``rows``, L2-normalised for cosine.

    Shape:
        rows: (n, P) float16/32/64; returns (n, P) float32.
    """
    out = np.ascontiguousarray(rows, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise DataError(f"feature row {bad} holds NaN or inf; retrieval needs finite features")
    if metric == "cosine":
        if np.may_share_memory(out, rows):  # never normalise the caller's array in place
            out = out.copy()
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


@dataclass
class RetrievalIndex:
    """A FAISS index over N feature rows of P dims; build with :func:`build_index` or :meth:`load`.

    Attributes:
        index: the FAISS index; row i of the features it was built from has id i (then in add order).
        kind, metric: see the module docstring.
        dim: P.
        nprobe: cells an IVF query scans (ignored by flat kinds).
    """

    index: Any
    kind: str
    metric: str
    dim: int
    nprobe: int = 1

    @property
    def count(self) -> int:
        """N, the number of rows indexed."""
        return int(self.index.ntotal)

    @property
    def bytes_per_clip(self) -> int:
        """Bytes the index holds per row (codes plus, for IVF kinds, the 8-byte id)."""
        if self.kind == "flat":
            return 4 * self.dim
        if self.kind == "flat_fp16":
            return 2 * self.dim
        if self.kind == "ivf":
            return 4 * self.dim + 8
        return int(self.index.pq.code_size) + 8

    def add(self, features: np.ndarray) -> None:
        """Append rows (ids continue from :attr:`count`), converted to float32 in chunks.

        Shape:
            features: (n, P) float16/32/64.
        """
        rows = _as_rows(features, "features")
        if rows.shape[1] != self.dim:
            raise DataError(f"features have {rows.shape[1]} dims but the index holds {self.dim}-dim rows")
        for start in range(0, len(rows), ADD_CHUNK_ROWS):
            self.index.add(_prepared(rows[start : start + ADD_CHUNK_ROWS], self.metric))

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` rows per query, best first.

        IVF kinds may find fewer than ``k`` rows in the ``nprobe`` scanned cells; FAISS pads those
        places with index -1 and score -3.4e38.

        Args:
            threads: threads a flat-kind search of fewer than ``threads`` queries splits the rows over
                (module docstring); None = FAISS's OpenMP thread count, 1 = never split.

        Shape:
            queries: (Q, P) or (P,) float16/32/64.
            returns: scores (Q, k) float32 descending, indices (Q, k) int64 row ids.
        """
        rows = _as_rows(queries, "queries")
        if rows.shape[1] != self.dim:
            raise DataError(f"queries have {rows.shape[1]} dims but the index holds {self.dim}-dim rows")
        if self.count == 0:
            raise DataError("the retrieval index is empty: add features before searching")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.count:
            raise ConfigValueError(
                "k", k, f"an integer in [1, {self.count}] (the index holds N={self.count})"
            )
        if self.kind in ("ivf", "ivfpq"):
            probe = self.nprobe if nprobe is None else nprobe
            if not 1 <= probe <= self.index.nlist:
                raise ConfigValueError("nprobe", probe, f"an integer in [1, {self.index.nlist}] (nlist)")
            self.index.nprobe = int(probe)
        if threads is None:
            threads = _faiss().omp_get_max_threads()
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ConfigValueError("threads", threads, "an integer >= 1, or None for FAISS's thread count")
        prepared = _prepared(rows, self.metric)
        if self.kind in ("flat", "flat_fp16") and len(rows) < threads and self.count >= SPLIT_MIN_ROWS:
            return self._search_row_ranges(prepared, int(k), int(threads))
        scores, indices = self.index.search(prepared, int(k))
        return scores, indices.astype(np.int64, copy=False)

    def _search_row_ranges(self, queries: np.ndarray, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k with the rows split into ``parts`` ranges, one thread each, then merged.

        Shape:
            queries: (Q, P) float32, prepared. returns: scores (Q, k) float32, indices (Q, k) int64.
        """
        faiss = _faiss()
        bounds = np.linspace(0, self.count, parts + 1).astype(np.int64)
        ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if self.kind == "flat":
            # A zero-copy view of the float32 rows, searched with the kernel an unfiltered single-query
            # search uses (a selector would pick another kernel, rounding the last float32 bit differently).
            stored = faiss.rev_swig_ptr(self.index.get_xb(), self.count * self.dim).reshape(self.count, -1)

            def scan(part: int) -> tuple[np.ndarray, np.ndarray]:
                low, high = ranges[part]
                scores, indices = faiss.knn(
                    queries, stored[low:high], min(k, high - low), metric=faiss.METRIC_INNER_PRODUCT
                )
                return scores, indices + low

        else:
            selectors = [faiss.IDSelectorRange(a, b) for a, b in ranges]  # alive for the searches
            params = [faiss.SearchParameters(sel=selector) for selector in selectors]

            def scan(part: int) -> tuple[np.ndarray, np.ndarray]:
                low, high = ranges[part]
                return self.index.search(queries, min(k, high - low), params=params[part])

        # One OpenMP thread inside each range's search: FAISS would give a single query's search a whole
        # team, all but one of them idle, spinning against the other ranges' threads.
        with ThreadPoolExecutor(parts, initializer=faiss.omp_set_num_threads, initargs=(1,)) as pool:
            found = list(pool.map(scan, range(parts)))
        scores = np.concatenate([part[0] for part in found], axis=1)
        indices = np.concatenate([part[1] for part in found], axis=1).astype(np.int64, copy=False)
        order = np.lexsort((indices, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)

    # -- persistence -----------------------------------------------------------------------------------

    @staticmethod
    def sidecar(path: Path | str) -> Path:
        """The JSON file beside an index file that records kind, metric, dim and nprobe."""
        path = Path(path)
        return path.with_name(path.name + ".json")

    def save(self, path: Path | str) -> None:
        """Write the index to ``path`` (``faiss.write_index``) and its settings to ``<path>.json``."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        tmp.replace(path)
        meta = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "count": self.count,
            "nprobe": self.nprobe,
        }
        self.sidecar(path).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> RetrievalIndex:
        """Read an index written by :meth:`save`; a missing or damaged file raises :class:`DataError`."""
        faiss = _faiss()
        path = Path(path)
        meta_path = cls.sidecar(path)
        for needed in (path, meta_path):
            if not needed.is_file():
                raise DataError(f"retrieval index file {needed} does not exist")
        try:
            meta = json.loads(meta_path.read_text())
            kind, metric, dim = str(meta["kind"]), str(meta["metric"]), int(meta["dim"])
            nprobe = int(meta.get("nprobe", 1))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"retrieval index settings {meta_path} are unreadable: {error}") from None
        if kind not in KINDS or metric not in METRICS:
            raise DataError(f"retrieval index settings {meta_path} name kind={kind!r} metric={metric!r}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise DataError(f"retrieval index file {path} is unreadable: {error}") from None
        if int(index.d) != dim or int(index.ntotal) != int(meta.get("count", index.ntotal)):
            raise DataError(
                f"retrieval index file {path} holds {index.ntotal} rows of {index.d} dims but {meta_path} "
                f"says {meta.get('count')} rows of {dim} dims"
            )
        return cls(index=index, kind=kind, metric=metric, dim=dim, nprobe=nprobe)


def build_index(
    features: np.ndarray,
    kind: str = "flat",
    metric: str = "ip",
    nlist: int = 1024,
    nprobe: int = 16,
    m: int = 64,
    seed: int = 0,
) -> RetrievalIndex:
    """Index the rows of ``features``; row i gets id i.

    Args:
        features: (N, P) float16/32/64 feature rows (one per clip). N may be 0 for flat kinds (add later).
        kind: flat (default, exact), flat_fp16 (exact over float16 storage), ivf or ivfpq.
        metric: ip or cosine.
        nlist: IVF cells (ivf, ivfpq); at most N. Trained by k-means on a seeded subsample of
            ``64 * nlist`` rows.
        nprobe: cells scanned per query by default (ivf, ivfpq); :meth:`RetrievalIndex.search` can override.
        m: product-quantiser sub-vectors (ivfpq); must divide P, and N must be >= 256 to train it.
        seed: seeds the training subsample and k-means, so the same rows give the same index.

    Shape:
        features: (N, P).
    """
    faiss = _faiss()
    if kind not in KINDS:
        raise ConfigValueError("kind", kind, f"one of {list(KINDS)}")
    if metric not in METRICS:
        raise ConfigValueError("metric", metric, f"one of {list(METRICS)}")
    rows = _as_rows(features, "features")
    if rows.shape[1] < 1:
        raise DataError(f"features must be a 2-D array (N, P) with P >= 1; got shape {rows.shape}")
    count, dim = rows.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "flat_fp16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        index = _trained_ivf(faiss, rows, kind, metric, nlist, m, seed)
    result = RetrievalIndex(index=index, kind=kind, metric=metric, dim=dim, nprobe=1)
    if kind in ("ivf", "ivfpq"):
        if isinstance(nprobe, bool) or not 1 <= int(nprobe) <= nlist:
            raise ConfigValueError("nprobe", nprobe, f"an integer in [1, {nlist}] (nlist)")
        result.nprobe = int(nprobe)
    result.add(rows)
    return result


def _trained_ivf(faiss, rows: np.ndarray, kind: str, metric: str, nlist: int, m: int, seed: int):
    count, dim = rows.shape
    if count == 0:
        raise DataError(
            f"an {kind} index needs training rows: features are empty (use kind=flat to start empty)"
        )
    if isinstance(nlist, bool) or not 1 <= int(nlist) <= count:
        raise ConfigValueError("nlist", nlist, f"an integer in [1, {count}] (N, the rows to index)")
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
    else:
        if isinstance(m, bool) or int(m) < 1 or dim % int(m):
            raise ConfigValueError("m", m, f"a divisor of the feature dimension P={dim}")
        if count < 256:
            raise DataError(
                f"an ivfpq index needs at least 256 rows to train its 8-bit codebooks; got {count}"
            )
        index = faiss.IndexIVFPQ(quantizer, dim, int(nlist), int(m), 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = int(seed) % 2**31
        # 256 codewords per sub-quantiser are fixed by the 8-bit codes, not chosen by the user; silence
        # FAISS's per-sub-quantiser "provide at least 9984 training points" warning on small corpora.
        index.pq.cp.min_points_per_centroid = 1
    index.cp.seed = int(seed) % 2**31
    # Subsample with our own seeded generator so the training set does not depend on FAISS's sampler.
    train_rows = min(count, TRAIN_ROWS_PER_LIST * int(nlist))
    if kind == "ivfpq":
        train_rows = max(train_rows, min(count, 256 * 39))
    picked = np.sort(np.random.default_rng(seed).choice(count, size=train_rows, replace=False))
    index.train(_prepared(rows[picked], metric))
    return index
