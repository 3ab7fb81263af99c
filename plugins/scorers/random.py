"""The random baseline: i.i.d. uniform scores, seeded; no features are computed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.scorers import Scorer, ScorerConfig


@dataclass
class RandomScorerConfig(ScorerConfig):
    """No fields."""


class RandomScorer(Scorer):
    """Uniform [0, 1) scores from a generator seeded by the run seed."""

    uses_features = False

    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        return ctx.rng("random-scorer").random((query.shape[1], train.shape[1]))


@hookimpl
def mwga_register_scorers(register):
    register("random", RandomScorer, RandomScorerConfig, description="uniform random scores (baseline)")
