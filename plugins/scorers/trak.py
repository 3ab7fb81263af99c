"""TRAK scoring (Park et al. 2023): features corrected by the training kernel, averaged over checkpoints.

For each checkpoint k, with Phi the (N, P) training features and phi_q a query's features:

    s_q = phi_q (Phi^T Phi + lambda I)^-1 Phi^T

and the score is the mean over checkpoints (TRAK's ensemble average). D-TRAK uses the same estimator
with a different output function; that choice belongs to the gradient source. TRAK's per-example
"out-to-loss" reweighting for classifiers has no counterpart for diffusion losses and is left out.

``damping`` is lambda. With ``relative_damping: true`` (default) it is a fraction of the mean eigenvalue
trace(Phi^T Phi) / P of each checkpoint's kernel, so one value fits any gradient scale. The system is
solved in float64 with ``numpy.linalg.solve`` (never an explicit inverse), in whichever of the
equivalent P x P or N x N forms is smaller (push-through identity:
(Phi^T Phi + lambda I)^-1 Phi^T = Phi^T (Phi Phi^T + lambda I)^-1). lambda = 0 uses least squares,
i.e. the pseudo-inverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.scorers import Scorer, ScorerConfig
from mwga_core.config.checks import at_least


@dataclass
class TrakScorerConfig(ScorerConfig):
    """lambda, absolute or relative to the kernel's mean eigenvalue."""

    damping: float = field(default=0.01, metadata=at_least(0, finite=True))
    relative_damping: bool = True


def trak_scores(query: np.ndarray, train: np.ndarray, damping: float) -> np.ndarray:
    """phi_q (Phi^T Phi + damping I)^-1 Phi^T for one checkpoint.

    Shape:
        query: (Q, P) float64.
        train: (N, P) float64.
        returns: (Q, N) float64.
    """
    n, p = train.shape
    if damping == 0:
        # min-norm least squares = pseudo-inverse, well defined when the kernel is singular
        weights = np.linalg.lstsq(train.T @ train, train.T, rcond=None)[0]
        return query @ weights
    if p <= n:
        kernel = train.T @ train + damping * np.eye(p)
        return query @ np.linalg.solve(kernel, train.T)
    gram = train @ train.T + damping * np.eye(n)
    return np.linalg.solve(gram, train @ query.T).T


class TrakScorer(Scorer):
    """TRAK's kernel-corrected inner product, mean over checkpoints."""

    def damping_for(self, train: np.ndarray) -> float:
        """lambda for one checkpoint's (N, P) training features."""
        if not self.config.relative_damping:
            return float(self.config.damping)
        mean_eigenvalue = float(np.einsum("np,np->", train, train)) / max(train.shape[1], 1)
        return float(self.config.damping) * mean_eigenvalue

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Shape: query (K, Q, P), train (K, N, P) -> (Q, N) float64."""
        total = np.zeros((query.shape[1], train.shape[1]))
        for k in range(query.shape[0]):
            phi = train[k].astype(np.float64)
            total += trak_scores(query[k].astype(np.float64), phi, self.damping_for(phi))
        return total / query.shape[0]


@hookimpl
def mwga_register_scorers(register):
    register(
        "trak",
        TrakScorer,
        TrakScorerConfig,
        description="TRAK: phi_q (Phi^T Phi + lambda I)^-1 Phi^T, mean over checkpoints",
    )
