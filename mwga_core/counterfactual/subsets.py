"""Random training subsets for the LDS protocol and the removal sets of retrain-without-top-k."""

from __future__ import annotations

import numpy as np


def draw_subsets(num_clips: int, count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` random subsets of round(fraction * num_clips) clips (at least 1), each sorted.

    Shape: returns (count, m) int64 indices into the training clips.
    """
    size = max(1, int(round(fraction * num_clips)))
    if count == 0:
        return np.empty((0, size), dtype=np.int64)
    return np.stack([np.sort(rng.choice(num_clips, size=size, replace=False)) for _ in range(count)])


def subset_masks(subsets: np.ndarray, num_clips: int) -> np.ndarray:
    """Membership of each subset. Shape: subsets (S, m) -> (S, num_clips) bool."""
    masks = np.zeros((len(subsets), num_clips), dtype=bool)
    for s, indices in enumerate(subsets):
        masks[s, indices] = True
    return masks


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring clips of one query, ties by index (as the rankings). (N,) -> (k,) int64."""
    return np.sort(np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k])


def random_removal(
    num_clips: int, k: int, rng: np.random.Generator, among: np.ndarray | None = None
) -> np.ndarray:
    """k random clips (of ``among``, e.g. the query's class, when given; all of it when it has fewer).

    Shape: among (M,) int64 or None -> (min(k, M),) int64, sorted.
    """
    pool = np.arange(num_clips) if among is None else np.asarray(among, dtype=np.int64)
    return np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))


def keep_without(num_clips: int, removed: np.ndarray) -> np.ndarray:
    """The training clips left after removing ``removed``. -> (N - len(removed),) int64, ascending."""
    keep = np.ones(num_clips, dtype=bool)
    keep[removed] = False
    return np.flatnonzero(keep)
