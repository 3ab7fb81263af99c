"""TracIn over checkpoints (Pruthi et al. 2020), optionally with Diffusion-ReTrac's normalisation.

    s_qi = sum_k lr_k <phi_i^k, phi_q^k>

with one learning rate per checkpoint k (all 1 by default). ``normalize: true`` L2-normalises every
feature vector first (Diffusion-ReTrac), which removes the dominance of clips with large gradients;
with one checkpoint it equals cosine scoring times lr_1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.scorers import Scorer, ScorerConfig, unit_rows


@dataclass
class TracInScorerConfig(ScorerConfig):
    """Per-checkpoint learning rates (empty: all 1) and Diffusion-ReTrac's L2 normalisation."""

    learning_rates: list[float] = field(default_factory=list)
    normalize: bool = False


class TracInScorer(Scorer):
    """Learning-rate weighted sum over checkpoints of feature inner products."""

    def __init__(self, config: TracInScorerConfig) -> None:
        super().__init__(config)
        rates = list(config.learning_rates)
        if any(not math.isfinite(float(rate)) or float(rate) <= 0 for rate in rates):
            raise ConfigValueError("learning_rates", rates, "a list of finite numbers > 0 (or [] for all 1)")
        self.learning_rates = [float(rate) for rate in rates]

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Shape: query (K, Q, P), train (K, N, P) -> (Q, N) float64."""
        checkpoints = query.shape[0]
        rates = self.learning_rates or [1.0] * checkpoints
        if len(rates) != checkpoints:
            # raised while scoring, after the core's prefixing, so the group is spelled out here
            raise ConfigValueError(
                "scorer.learning_rates",
                self.learning_rates,
                f"one rate per checkpoint: {checkpoints} numbers, or [] for all 1",
            )
        q, t = query.astype(np.float64), train.astype(np.float64)
        if self.config.normalize:
            q, t = unit_rows(q), unit_rows(t)
        return np.einsum("k,kqp,knp->qn", np.asarray(rates), q, t)


@hookimpl
def mwga_register_scorers(register):
    register(
        "tracin",
        TracInScorer,
        TracInScorerConfig,
        description="TracIn: lr-weighted sum over checkpoints (normalize: Diffusion-ReTrac)",
    )
