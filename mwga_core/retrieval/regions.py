"""Where in the frame a match lies: each query region's share of the query's score with a training clip.

A gradient source that splits the loss into ``regions`` x ``regions`` cells (the ``diffusion`` source with
``gradient.regions > 1`` and ``region_split=loss``: :class:`mwga_core.diffusion.contrasts.LossRegions`)
lays each clip's gradient row out as (parts, cells, D): the contrast's parts (2 for ``reverse_static``,
:class:`~mwga_core.diffusion.contrasts.ReverseStaticContrast`: the time-odd half, then the static one;
else 1), each holding the cells' gradients row by row from the frame's top left, D columns each. The
cells' gradients sum to the whole frame's and every projector is linear, so projecting a query's row
with every cell but r zeroed gives features q_r with sum_r q_r = q, the query's features.

A scorer that is an inner product of per-clip vectors (``searchable_by_inner_product``) scores
s = mean_k <v(q_k), v(t_k)> over the K checkpoints; for ``cosine`` and ``dot`` v(q_k) = a_k q_k
(a_k = 1 / |q_k| or 1), so c_r = mean_k a_k <q_{r,k}, v(t_k)> sums over r to s: c_r is how much the
query's region r contributed to its score with clip t (its sign says whether that region's motion
agrees with the clip's). Each step is checked (the parts add up to q; v scales rows; the c_r add up to
the score); where one fails, or the method has no cells, there is no map, and the reason is returned
instead: no map is ever made up.
"""

from __future__ import annotations

import numpy as np

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientConfig, GradientSource
from mwga_core.api.projectors import Projector, factorizes
from mwga_core.api.scorers import Scorer

#: relative error allowed where float32 projections are added up again
TOLERANCE = 1e-3


def region_layout(config: GradientConfig) -> tuple[int, int] | str:
    """(contrast parts, regions per side) of a gradient config with loss cells, else why it has none."""
    regions = getattr(config, "regions", 1)
    if not isinstance(regions, int) or regions <= 1:
        return (
            f"gradient={config.name} has no spatial cells (gradient.regions > 1 splits the loss into cells): "
            "no per-region map"
        )
    split = getattr(config, "region_split", "loss")
    if split != "loss":
        return f"gradient.region_split={split}: per-region maps need region_split=loss"
    return (2 if getattr(config, "contrast", "none") == "reverse_static" else 1), regions


def query_region_features(
    gradient: GradientSource,
    projector: Projector,
    queries: AnalysedClips,
    layout: tuple[int, int],
    ctx: RunContext,
) -> np.ndarray:
    """The queries' features from each cell alone (the query's gradient computed again).

    Shape:
        returns (R, K, Q, P) float64, R = regions^2 cells row by row.
    """
    import torch

    parts, regions = layout
    cells = regions * regions
    if factorizes(gradient, projector):
        chunks = gradient.iter_reduced_gradients(queries, ctx, projector)
    else:
        chunks = gradient.iter_gradients(queries, ctx)
    found: dict[int, np.ndarray] = {}
    for chunk in chunks:
        grads = chunk.grads
        k, n, width = grads.shape
        if width % (parts * cells):
            raise ValueError(f"{width} gradient columns do not split into {parts} x {cells} cells")
        view = grads.reshape(k, n, parts, cells, width // (parts * cells))
        per_cell = []
        for cell in range(cells):
            alone = torch.zeros_like(view)
            alone[:, :, :, cell] = view[:, :, :, cell]
            flat = alone.reshape(k, n, width)
            per_cell.append(np.stack([projector.project(flat[c], ctx).cpu().numpy() for c in range(k)]))
        stacked = np.stack(per_cell).astype(np.float64)  # (R, K, n, P)
        for column, index in enumerate(np.asarray(chunk.indices, dtype=np.int64)):
            found[int(index)] = stacked[:, :, column]
    return np.stack([found[q] for q in range(len(queries))], axis=2)


def region_contributions(
    cell_features: np.ndarray,
    query_features: np.ndarray,
    top_train: list[np.ndarray],
    top_scores: np.ndarray,
    scorer: Scorer,
) -> np.ndarray | str:
    """Each cell's contribution c_r to each top clip's score (see the module docstring), or why not.

    Args:
        cell_features: (R, K, Q, P) from :func:`query_region_features`.
        query_features: (K, Q, P) the queries' features as scored.
        top_train: per query, (K, k, P) the features its top clips are scored with (after the scorer's
            whole-index step).
        top_scores: (Q, k) their scores.
        scorer: the scorer that scored them.

    Shape:
        returns (Q, k, R) float64.
    """
    if not scorer.searchable_by_inner_product:
        return f"scorer {scorer.config.name} is no inner product of per-clip vectors: no per-region map"
    query = np.asarray(query_features, dtype=np.float64)
    total = cell_features.sum(axis=0)
    if np.linalg.norm(total - query) > TOLERANCE * max(np.linalg.norm(query), 1e-12):
        return "the cells' features do not add up to the query's: no per-region map"
    searched = np.asarray(scorer.search_vectors(query), dtype=np.float64)
    if searched.shape != query.shape:
        return f"scorer {scorer.config.name} maps features to other vectors: no per-region map"
    squares = (query * query).sum(axis=-1)
    scale = np.divide((searched * query).sum(axis=-1), squares, out=np.zeros_like(squares), where=squares > 0)
    if np.linalg.norm(searched - scale[..., None] * query) > TOLERANCE * max(np.linalg.norm(searched), 1e-12):
        return f"scorer {scorer.config.name} does not score a scaling of the features: no per-region map"
    maps = []
    for q, train in enumerate(top_train):
        vectors = np.asarray(scorer.search_vectors(np.asarray(train)), dtype=np.float64)  # (K, k, P)
        # c[j, r] = mean_k a_k <q_{r,k}, v(t_{j,k})>
        maps.append(np.einsum("k,rkp,kjp->jr", scale[:, q], cell_features[:, :, q], vectors) / len(vectors))
    contributions = np.stack(maps)
    scores = np.asarray(top_scores, dtype=np.float64)
    if np.abs(contributions.sum(axis=-1) - scores).max(initial=0.0) > TOLERANCE * max(
        np.abs(scores).max(initial=0.0), 1e-12
    ):
        return "the cells' contributions do not add up to the scores: no per-region map"
    return contributions


def region_note(regions: int) -> str:
    """What the maps show, for the page."""
    return (
        f"Region maps: the frame split into {regions} x {regions} cells; each cell's colour is how much the "
        "query's motion there contributed to the clip's score (the cells add up to it; red: for the match, "
        "blue: against it; hover for values). The query's gradient is computed again, cell by cell."
    )
