"""Scorers: influence of every training clip on every query, from their features.

Built-in implementations (``plugins/scorers``):
    cosine: the paper's eq. 5, averaged over checkpoints.
    dot: the raw inner product, averaged over checkpoints.
    trak: TRAK's kernel-corrected inner product.
    tracin: TracIn's learning-rate weighted sum over checkpoints.
    random: uniform random scores (the random baseline); reads no features.

A scorer whose score is an inner product of per-clip vectors says so
(:attr:`Scorer.searchable_by_inner_product` and :meth:`Scorer.search_vectors`): ``mwga attribute`` then
finds its top clips with an exact FAISS search instead of scoring every indexed clip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig


@dataclass
class ScorerConfig(ComponentConfig):
    """Base config for scorers."""


class Scorer(ABC):
    """Features to scores; higher means more influential."""

    #: False for scorers that ignore features: the pipeline then skips motion, descriptor, gradient
    #: and projection, and passes features with P = 0.
    uses_features: ClassVar[bool] = True
    #: True when ``score(query, train)`` is the mean over the K checkpoints of the inner products of the
    #: rows :meth:`search_vectors` maps the features to; an exact inner-product search then finds the
    #: clips that score highest (ties aside), and only those are scored.
    searchable_by_inner_product: ClassVar[bool] = False

    def __init__(self, config: ScorerConfig) -> None:
        check_fields(config)
        self.config = config

    @abstractmethod
    def score(self, query: np.ndarray, train: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Score every (query, training clip) pair.

        Shape:
            query: (K, Q, P) float32 features, K checkpoints.
            train: (K, N, P) float32 features.
            returns: (Q, N) float64 scores.
        """

    def per_clip(self, train: np.ndarray, ctx: RunContext) -> tuple[Scorer, np.ndarray]:
        """A scorer and training features that score any *subset* of ``train`` as :meth:`score` scores it
        within the whole set.

        ``mwga attribute`` searches and rescores subsets of the indexed clips, which is only right for a
        scorer whose score of one clip ignores the others. A scorer that reads the whole training set
        (e.g. ``cosine`` with ``neighbours``) returns its training-side step applied once to all of
        ``train`` and a scorer without that step. Default: ``(self, train)``.

        Shape:
            train: (K, N, P); returns features (K, N, P') for the returned scorer.
        """
        return self, train

    def search_vectors(self, features: np.ndarray) -> np.ndarray:
        """The vectors whose inner products (mean over checkpoints) are this scorer's scores.

        Used only when :attr:`searchable_by_inner_product` is True. Default: the features themselves.

        Shape:
            features: (K, n, P) float32; returns (K, n, P') float32.
        """
        return features

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in the input's dtype; all-zero rows stay zero.

    Shape:
        features: (..., P); returns the same shape.
    """
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
