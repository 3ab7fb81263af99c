"""Cosine similarity (the paper's eq. 5), averaged over checkpoints when there are several.

With ``neighbours: k > 0`` every training clip's feature is first replaced by the sum of its own unit
feature and those of its k nearest training clips (by cosine), before the cosine with the queries:
database-side augmentation (Arandjelovic and Zisserman, "Three things everyone should know to improve
object retrieval", CVPR 2012; Gordo et al. 2017). It reads the training features only (no label, no
query), so a clip is credited for its neighbourhood in gradient space: a clip whose own gradient is
noisy but whose nearest clips agree with the query ranks higher. The query side is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.scorers import Scorer, ScorerConfig, unit_rows
from mwga_core.config.checks import at_least

#: training-similarity entries held at once while finding neighbours (rows x N), to bound memory for
#: large corpora; the result does not depend on it
NEIGHBOUR_BLOCK_ENTRIES = 2**22


@dataclass
class CosineScorerConfig(ScorerConfig):
    """``neighbours``: 0 = plain cosine; k > 0 = database-side augmentation with k nearest training clips."""

    neighbours: int = field(default=0, metadata=at_least(0, note="0 = plain cosine"))


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
        t = unit_rows(train.astype(np.float64))
        if self.config.neighbours == 0:
            return t
        return unit_rows(
            np.stack([augment_with_neighbours(t[k], self.config.neighbours) for k in range(len(t))])
        )

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
