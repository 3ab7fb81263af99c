"""Cosine similarity (the paper's eq. 5), averaged over checkpoints when there are several."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.context import RunContext
from mwga_core.scorers import Scorer, ScorerConfig


@dataclass
class CosineScorerConfig(ScorerConfig):
    """No fields."""


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


class CosineScorer(Scorer):
    """s_qi = <g_q, g_i> / (||g_q|| ||g_i||), mean over the K checkpoints."""

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        q = unit_rows(query.astype(np.float64))
        t = unit_rows(train.astype(np.float64))
        return np.einsum("kqp,knp->qn", q, t) / q.shape[0]


@hookimpl
def mwga_register_scorers(register):
    register("cosine", CosineScorer, CosineScorerConfig, description="cosine similarity (eq. 5)")
