"""Datasets: where training clips and query clips come from.

Built-in implementations (``plugins/datasets``):
    synthetic: the paper's benchmark of six planted motion patterns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from mwga_core.api.clips import Corpus
from mwga_core.api.context import RunContext
from mwga_core.plugin_host.registry import ComponentConfig


@dataclass
class DatasetConfig(ComponentConfig):
    """Base config for datasets."""


class Dataset(ABC):
    """Produces a :class:`Corpus` (training clips, query clips, class names)."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config

    @abstractmethod
    def load(self, ctx: RunContext) -> Corpus:
        """Return the corpus; the same config and ``ctx.seed`` must give identical clips."""

    def cache_fingerprint(self) -> object | None:
        """What the corpus depends on besides config, seed and code (e.g. the size and time of every file
        read), as JSON-able data; the stage cache keeps the loaded corpus under a key of it. None (the
        default): the corpus is loaded every run and later stages are keyed by its content."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
