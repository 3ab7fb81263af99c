"""Cosine similarity (the paper's eq. 5), averaged over checkpoints when there are several.

With ``neighbours: k > 0`` every training clip's feature is first replaced by the sum of its own unit
feature and those of its k nearest training clips (by cosine), before the cosine with the queries:
database-side augmentation (Arandjelovic and Zisserman, "Three things everyone should know to improve
object retrieval", CVPR 2012; Gordo et al. 2017). It reads the training features only (no label, no
query), so a clip is credited for its neighbourhood in gradient space: a clip whose own gradient is
noisy but whose nearest clips agree with the query ranks higher. The query side is unchanged.

Finding the neighbours exactly compares every training clip with every other: O(N^2 P). Below
``exact_neighbours_below`` clips it is done so (:func:`augment_with_neighbours`); from there on the
candidates come from an inverted-file search (:func:`augment_approximately`: FAISS k-means cells, each
clip compared only with the clips of the ``NEIGHBOUR_PROBES`` cells nearest to it), and are then ranked
exactly as the exact path ranks them. ``mwga index`` applies the step once and stores its result
(:meth:`CosineScorer.per_clip`), so ``mwga attribute`` never repeats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.scorers import Scorer, ScorerConfig, unit_rows
from mwga_core.config.checks import at_least

#: training-similarity entries held at once while finding neighbours (rows x N), to bound memory for
#: large corpora; the result does not depend on it
NEIGHBOUR_BLOCK_ENTRIES = 2**22
#: cells of the approximate search: about sqrt(N) (k-means on a seeded sample of 64 rows per cell)
CELLS_PER_SQRT_ROW = 1.0
#: cells each clip's neighbours are looked for in (its own first)
NEIGHBOUR_PROBES = 8
#: candidates kept per clip by the approximate search beyond itself and its k neighbours, re-ranked in
#: float64: a float32 near-tie at the k-th place does not lose the true neighbour
EXTRA_CANDIDATES = 2
#: float32 similarities of a row's candidates closer than this are ranked again in float64 (float32's
#: error on a cosine of unit rows is ~1e-6)
FLOAT32_TIE = 1e-4
#: seed of the approximate search's k-means: the neighbours depend on the training rows only
NEIGHBOUR_SEARCH_SEED = 0
#: rows whose candidates are re-ranked at once
RERANK_BLOCK_ROWS = 1024


@dataclass
class CosineScorerConfig(ScorerConfig):
    """``neighbours``: 0 = plain cosine; k > 0 = database-side augmentation with k nearest training clips.
    ``exact_neighbours_below``: corpora of fewer clips find the neighbours exactly, larger ones through
    an approximate inverted-file search."""

    neighbours: int = field(default=0, metadata=at_least(0, note="0 = plain cosine"))
    exact_neighbours_below: int = field(
        default=20000, metadata=at_least(0, note="0 = always the approximate search")
    )


def augment_with_neighbours(unit_train: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row plus its ``neighbours`` most similar other rows (database-side augmentation).

    A row always counts itself first, even when other rows are identical to it; among equal similarities
    the lower index wins, so the result is deterministic. ``neighbours`` is capped at N - 1.

    Shape:
        unit_train: (N, P) float64 unit (or all-zero) rows.
        returns: (N, P) float64, row i = sum of the unit rows of i and of its nearest neighbours.
    """
    n = unit_train.shape[0]
    k = min(neighbours, n - 1)
    if k <= 0:
        return unit_train.copy()
    augmented = np.empty_like(unit_train)
    rows_per_block = max(1, NEIGHBOUR_BLOCK_ENTRIES // n)
    for start in range(0, n, rows_per_block):
        stop = min(start + rows_per_block, n)
        similarity = unit_train[start:stop] @ unit_train.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = np.inf  # itself first
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, : k + 1]
        augmented[start:stop] = unit_train[nearest].sum(axis=1)
    return augmented


def neighbour_candidates(unit32: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` candidate neighbours of every row (itself among them), from an inverted file.

    The rows are split into about sqrt(N) cells by seeded k-means (the IVF training of
    :func:`mwga_core.retrieval.faiss_index.build_index`); each row is compared, by float32 inner
    product, with every row of the ``NEIGHBOUR_PROBES`` cells whose centroids are nearest to it. The
    work is done cell by cell: all rows that probe a cell against all rows in it, one matrix product.

    Shape:
        unit32: (N, P) float32 unit rows.
        returns: (N, count) int64 row ids, best first (-1 where fewer were found), and (N, count)
        float32 their inner products.
    """
    import faiss

    from mwga_core.retrieval.faiss_index import TRAIN_ROWS_PER_LIST, build_index

    n = len(unit32)
    # about sqrt(N) cells, each with the 39 training rows FAISS's k-means asks for
    cells = max(1, min(round(CELLS_PER_SQRT_ROW * math.sqrt(n)), n // 39))
    probes = min(NEIGHBOUR_PROBES, cells)
    rng = np.random.default_rng(NEIGHBOUR_SEARCH_SEED)
    sample = np.sort(rng.choice(n, size=min(n, TRAIN_ROWS_PER_LIST * cells), replace=False))
    # an IVF index trained on the sample (and holding only it): its quantizer holds the cell centroids
    trained = build_index(unit32[sample], kind="ivf", nlist=cells, nprobe=1, seed=NEIGHBOUR_SEARCH_SEED)
    quantizer = trained.index.quantizer
    _, probed = quantizer.search(unit32, probes)  # (N, probes), nearest cell first: a row's own cell
    members = np.argsort(probed[:, 0], kind="stable")
    member_bounds = np.searchsorted(probed[members, 0], np.arange(cells + 1))
    visits = np.argsort(probed.ravel(), kind="stable")  # (row, probe) pairs grouped by cell
    visit_bounds = np.searchsorted(probed.ravel()[visits], np.arange(cells + 1))
    heap = faiss.ResultHeap(n, count, keep_max=True)
    threads = faiss.omp_get_max_threads()
    # The heap update is a short loop per block, while numpy's BLAS threads are busy around it: one
    # FAISS thread keeps them from spinning against each other (3x faster on 2 cores).
    faiss.omp_set_num_threads(1)
    try:
        for cell in range(cells):
            rows = members[member_bounds[cell] : member_bounds[cell + 1]]
            queries = visits[visit_bounds[cell] : visit_bounds[cell + 1]] // probes
            if len(rows) and len(queries):
                heap.add_result_subset(queries, unit32[queries] @ unit32[rows].T, rows)
    finally:
        faiss.omp_set_num_threads(threads)
    heap.finalize()
    return heap.I, heap.D


def augment_approximately(train: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`augment_with_neighbours` (then scaled to unit rows) with the neighbours searched among
    each row's :func:`neighbour_candidates` instead of among all rows.

    The candidates are ranked as the exact path ranks all rows: by float64 cosine, ties to the lower
    index, the row itself first; so a row whose true neighbours are among its candidates gets the exact
    path's result bit for bit. Their float32 similarities decide where every gap between consecutive
    ones (down to the first left out) exceeds ``FLOAT32_TIE``, far above float32's error; the other rows
    are ranked on float64 similarities. A row with too few candidates, or an all-zero row (as similar to
    every row), is compared with every row.

    Shape:
        train: (N, P) float32 features.
        returns: (N, P) float64 unit augmented rows, and (N, k + 1) int64 the rows summed for each.
    """
    n = len(train)
    k = min(neighbours, n - 1)
    norms = np.concatenate(
        [
            np.linalg.norm(np.asarray(train[start : start + RERANK_BLOCK_ROWS], dtype=np.float64), axis=-1)
            for start in range(0, n, RERANK_BLOCK_ROWS)
        ]
    )

    def unit(rows: np.ndarray) -> np.ndarray:  # bit for bit unit_rows(train[rows].astype(float64))
        features = train[rows].astype(np.float64)  # a copy: scaled in place
        scale = norms[rows][..., None]
        if scale.all():
            return np.divide(features, scale, out=features)
        return np.divide(features, scale, out=features, where=scale > 0)  # an all-zero row stays zero

    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    unit32 = np.empty(train.shape, dtype=np.float32)
    for start in range(0, n, RERANK_BLOCK_ROWS):
        block = slice(start, start + RERANK_BLOCK_ROWS)
        np.multiply(train[block], inverse[block, None], out=unit32[block])
    candidates, similarity32 = neighbour_candidates(unit32, k + 1 + EXTRA_CANDIDATES)
    del unit32
    augmented = np.empty(train.shape, dtype=np.float64)
    nearest = np.empty((n, k + 1), dtype=np.int64)
    for start in range(0, n, RERANK_BLOCK_ROWS):
        block = slice(start, min(start + RERANK_BLOCK_ROWS, n))
        own = np.arange(block.start, block.stop)
        found = candidates[block]
        similarity = np.where((found < 0) | (found == own[:, None]), -np.inf, similarity32[block])
        order = np.argsort(-similarity, axis=1, kind="stable")[:, : k + 1]
        ranked = np.take_along_axis(similarity, order, axis=1)  # the k best others, then the first left out
        with np.errstate(invalid="ignore"):  # -inf - -inf (no candidate on either side): unsure
            clear = (np.diff(ranked, axis=1) < -FLOAT32_TIE).all(axis=1)
        unsure = ~clear | ~np.isfinite(ranked[:, :k]).all(axis=1) | (norms[block] == 0)
        nearest[block, 0] = own
        nearest[block, 1:] = np.take_along_axis(found, order[:, :k], axis=1)
        if unsure.any():
            nearest[own[unsure]] = _rank_in_float64(train, norms, unit, own[unsure], found[unsure], k)
        augmented[block] = unit_rows(unit(nearest[block]).sum(axis=1))
    return augmented, nearest


def _rank_in_float64(
    train: np.ndarray, norms: np.ndarray, unit, own: np.ndarray, found: np.ndarray, k: int
) -> np.ndarray:
    """Rows ``own`` and their ``k`` most similar other ``found`` candidates by float64 cosine, ties to
    the lower row; a row with fewer than ``k`` candidates (or all-zero) is compared with every row.

    Shape: own (b,), found (b, c) -> (b, k + 1) int64."""
    rows, others = unit(own), unit(np.maximum(found, 0))
    similarity = np.matmul(others, rows[:, :, None])[:, :, 0]
    similarity[(found < 0) | (found == own[:, None])] = -np.inf
    order = np.lexsort((found, -similarity), axis=1)[:, :k]
    nearest = np.concatenate([own[:, None], np.take_along_axis(found, order, axis=1)], axis=1)
    short = ~np.isfinite(np.take_along_axis(similarity, order, axis=1)).all(axis=1) | (norms[own] == 0)
    for row in np.flatnonzero(short):
        nearest[row] = _exact_nearest(train, norms, own[row], k)
    return nearest


def _exact_nearest(train: np.ndarray, norms: np.ndarray, row: int, k: int) -> np.ndarray:
    """Row ``row`` and its ``k`` most similar other rows, compared with every row (as the exact path).

    Shape: train (N, P), norms (N,) -> (k + 1,) int64."""
    target = np.asarray(train[row], dtype=np.float64) / (norms[row] if norms[row] > 0 else 1.0)
    similarity = np.concatenate(
        [
            unit_rows(np.asarray(train[start : start + RERANK_BLOCK_ROWS], dtype=np.float64)) @ target
            for start in range(0, len(train), RERANK_BLOCK_ROWS)
        ]
    )
    similarity[row] = np.inf
    return np.argsort(-similarity, kind="stable")[: k + 1]


class CosineScorer(Scorer):
    """s_qi = <g_q, g_i> / (||g_q|| ||g_i||), mean over the K checkpoints; g_i augmented by its
    ``neighbours`` nearest training clips when that is > 0. All-zero rows score 0 with anything.

    Searchable by inner product (of unit rows) once the neighbours step is applied: :meth:`per_clip`.
    """

    searchable_by_inner_product = True

    def augmented_train(self, train: np.ndarray) -> np.ndarray:
        """The unit training rows after the ``neighbours`` step (unchanged when it is 0).

        Shape: train (K, N, P) -> (K, N, P) float64 unit (or all-zero) rows.
        """
        neighbours = self.config.neighbours
        if neighbours > 0 and train.shape[1] >= max(2, self.config.exact_neighbours_below):
            augmented = np.empty(train.shape, dtype=np.float64)
            for k, checkpoint in enumerate(train):
                augmented[k] = augment_approximately(checkpoint, neighbours)[0]
            return augmented
        t = unit_rows(train.astype(np.float64))
        if neighbours == 0:
            return t
        return unit_rows(np.stack([augment_with_neighbours(t[k], neighbours) for k in range(len(t))]))

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Shape: query (K, Q, P), train (K, N, P) -> (Q, N) float64."""
        q = unit_rows(query.astype(np.float64))
        return np.einsum("kqp,knp->qn", q, self.augmented_train(train)) / q.shape[0]

    def search_vectors(self, features: np.ndarray) -> np.ndarray:
        """Unit rows: their inner product is the cosine. Shape: (K, n, P) -> (K, n, P)."""
        return unit_rows(features)

    def per_clip(self, train: np.ndarray, ctx: RunContext) -> tuple[Scorer, np.ndarray]:
        """With ``neighbours``: the augmented training rows and a plain cosine (see :class:`Scorer`)."""
        if self.config.neighbours == 0:
            return self, train
        plain = CosineScorer(CosineScorerConfig(name=self.config.name, neighbours=0))
        return plain, self.augmented_train(train)


@hookimpl
def mwga_register_scorers(register):
    register("cosine", CosineScorer, CosineScorerConfig, description="cosine similarity (eq. 5)")
