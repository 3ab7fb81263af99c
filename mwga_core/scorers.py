"""Scorers: influence of every training clip on every query, from their features.

Built-in implementations (``plugins/scorers``):
    cosine: the paper's eq. 5, averaged over checkpoints.
    random: uniform random scores (the random baseline); reads no features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mwga_core.context import RunContext
from mwga_core.registry import ComponentConfig


@dataclass
class ScorerConfig(ComponentConfig):
    """Base config for scorers."""


class Scorer(ABC):
    """Features to scores; higher means more influential."""

    #: False for scorers that ignore features: the pipeline then skips motion, descriptor, gradient
    #: and projection, and passes features with P = 0.
    uses_features: ClassVar[bool] = True

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config

    @abstractmethod
    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Score every (query, training clip) pair.

        Shape:
            query: (K, Q, P) float32 features, K checkpoints.
            train: (K, N, P) float32 features.
            returns: (Q, N) float64 scores.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
