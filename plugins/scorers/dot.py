"""Raw inner product of features, averaged over checkpoints (TRAK without the kernel correction)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.scorers import Scorer, ScorerConfig


@dataclass
class DotScorerConfig(ScorerConfig):
    """No fields."""


class DotScorer(Scorer):
    """s_qi = mean_k <phi_q^k, phi_i^k>; unlike cosine, a clip's gradient norm counts."""

    searchable_by_inner_product = True

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        q, t = query.astype(np.float64), train.astype(np.float64)
        return np.einsum("kqp,knp->qn", q, t) / q.shape[0]


@hookimpl
def mwga_register_scorers(register):
    register("dot", DotScorer, DotScorerConfig, description="inner product, mean over checkpoints")
