"""The scorer's whole-index step and search index, made once by ``mwga index``, read by ``mwga attribute``.

``mwga attribute`` searches and rescores *subsets* of an index's clips. That needs the scorer's
training-side step applied to the whole index first (:meth:`~mwga_core.api.scorers.Scorer.per_clip`:
for ``cosine`` with ``neighbours``, the database-side augmentation, which compares every clip with the
others) and, for a scorer that is an inner product (``searchable_by_inner_product``), a FAISS index of
its search vectors. Neither depends on a query, so ``mwga index`` makes both after it consolidates the
rows (:func:`store_prepared_scoring`) and ``mwga attribute`` loads them (:func:`load_prepared_scoring`)
instead of recomputing them for every call.

Layout, inside the index's ``data-<n>/`` (written into a hidden temporary folder, then renamed)::

    scoring/
        scoring.json           the scorer config it was made for, N, the per-clip scorer's config
                               (null: the scorer itself)
        per_clip_features.npy  (K, N, P') the per-clip scorer's training features, only when they are
                               not features.npy (float64 for an augmented cosine)
        search.faiss(.json)    a ``flat_fp16`` index (``flat`` when a value is beyond float16's range) of
                               the search vectors, (N, K P'), only for inner-product scorers

The stored search index holds float16 rows, so :func:`mwga_core.retrieval.attribute.search` asks it for
``2 k + SEARCH_MARGIN`` candidates and rescores them exactly in float64 before keeping the top k: a
clip is missed only if float16 rounding pushes more than k + ``SEARCH_MARGIN`` clips past it.

The record is made for one scorer config: ``mwga index`` with another scorer (or an index made before
this module) makes it anew, and ``mwga attribute`` on a record that does not match the index's scorer
falls back to computing the step itself (:func:`load_prepared_scoring` returns None).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.errors import DataError
from mwga_core.api.scorers import Scorer
from mwga_core.retrieval.faiss_index import ADD_CHUNK_ROWS, RetrievalIndex, build_index
from mwga_core.storage.atomic import temp_path

#: the folder inside ``data-<n>/``
SCORING = "scoring"
RECORD = "scoring.json"
PER_CLIP_FEATURES = "per_clip_features.npy"
SEARCH_INDEX = "search.faiss"
#: bump when the record's meaning changes (an older record is made anew by ``mwga index``)
FORMAT_VERSION = 1
#: candidates asked of a stored (float16) search index beyond twice the k wanted, all rescored exactly
SEARCH_MARGIN = 32
#: the largest magnitude a search vector may have to be stored as float16 (its maximum is 65504)
FLOAT16_LIMIT = 60000.0


@dataclass
class PreparedScoring:
    """What scores any subset of an index's clips as the index's scorer scores them within all of them.

    Attributes:
        scorer: the per-clip scorer (:meth:`Scorer.per_clip`).
        features: its training features, shape (K, N, P').
        search: a FAISS index of its search vectors, shape (N, K P') float16; None for a scorer that is
            not an inner product.
    """

    scorer: Scorer
    features: np.ndarray
    search: RetrievalIndex | None


def search_rows(scorer: Scorer, features: np.ndarray) -> np.ndarray:
    """The rows an inner-product search of ``scorer`` runs over: its search vectors of the K checkpoints
    side by side, so their inner product is K times the mean over checkpoints.

    Shape:
        features: (K, n, P). returns: (n, K P') float32.
    """
    vectors = scorer.search_vectors(np.asarray(features, dtype=np.float32))
    return np.concatenate(list(vectors), axis=1)


def build_search_index(scorer: Scorer, features: np.ndarray) -> RetrievalIndex:
    """An exact FAISS index of ``scorer``'s search rows over float16 storage (``flat_fp16``), or float32
    (``flat``) when a value is too large for float16; made chunk by chunk, so the float32 rows never
    exist whole.

    Shape:
        features: (K, N, P).
    """
    chunks = range(0, features.shape[1], ADD_CHUNK_ROWS)
    dim = search_rows(scorer, features[:, :0]).shape[1]
    index = build_index(np.empty((0, dim), np.float32), kind="flat_fp16", metric="ip")
    for start in chunks:
        rows = search_rows(scorer, features[:, start : start + ADD_CHUNK_ROWS])
        if index.kind == "flat_fp16" and rows.size and float(np.abs(rows).max()) > FLOAT16_LIMIT:
            index = build_index(np.empty((0, dim), np.float32), kind="flat", metric="ip")
            for earlier in range(0, start, ADD_CHUNK_ROWS):
                index.add(search_rows(scorer, features[:, earlier : earlier + ADD_CHUNK_ROWS]))
        index.add(rows)
    return index


def prepare_scoring(scorer: Scorer, features: np.ndarray, ctx: RunContext) -> PreparedScoring:
    """The per-clip scorer and features of ``scorer`` on the whole index, and their search index.

    Shape:
        features: (K, N, P) the index's features.
    """
    per_clip_scorer, per_clip_features = scorer.per_clip(features, ctx)
    search = (
        build_search_index(per_clip_scorer, per_clip_features)
        if per_clip_scorer.searchable_by_inner_product
        else None
    )
    return PreparedScoring(per_clip_scorer, per_clip_features, search)


def _record(data_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((data_dir / SCORING / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT_VERSION else None


def is_stored(data_dir: Path, scorer_config: dict[str, Any], count: int) -> bool:
    """Whether ``data_dir/scoring/`` was made for this scorer config and ``count`` clips."""
    record = _record(Path(data_dir))
    as_stored = json.loads(json.dumps(scorer_config, default=str))  # as the manifest holds it
    return record is not None and record.get("scorer") == as_stored and record.get("count") == count


def store_prepared_scoring(
    data_dir: Path, scorer: Scorer, scorer_config: dict[str, Any], features: np.ndarray, ctx: RunContext
) -> bool:
    """Make ``data_dir/scoring/`` for ``scorer`` (whose config, as the manifest holds it, is
    ``scorer_config``) unless it is already there for it. Returns whether it was made.

    Shape:
        features: (K, N, P) the rows of ``data_dir``.
    """
    if is_stored(Path(data_dir), scorer_config, int(features.shape[1])):
        return False
    write_prepared_scoring(data_dir, scorer, scorer_config, prepare_scoring(scorer, features, ctx))
    return True


def write_prepared_scoring(
    data_dir: Path, scorer: Scorer, scorer_config: dict[str, Any], prepared: PreparedScoring
) -> None:
    """Write ``prepared`` (made from ``scorer``) as ``data_dir/scoring/``: into a temporary folder, then
    renamed into place; the record is written last."""
    own = prepared.scorer is scorer
    record = {
        "format": FORMAT_VERSION,
        "scorer": json.loads(json.dumps(scorer_config, default=str)),
        "count": int(prepared.features.shape[1]),
        "per_clip_scorer": None if own else dataclasses.asdict(prepared.scorer.config),
        "search": prepared.search is not None,
    }
    folder = Path(data_dir) / SCORING
    tmp = temp_path(folder)
    tmp.mkdir(parents=True)
    try:
        if not own:
            np.save(tmp / PER_CLIP_FEATURES, np.ascontiguousarray(prepared.features), allow_pickle=False)
        if prepared.search is not None:
            prepared.search.save(tmp / SEARCH_INDEX)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")  # last: it says the rest is whole
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_prepared_scoring(
    data_dir: Path, scorer: Scorer, scorer_config: dict[str, Any], features: np.ndarray, host: Any
) -> PreparedScoring | None:
    """The stored :class:`PreparedScoring` of ``data_dir`` for ``scorer``, or None when none was made for
    it (an index made before mwga stored it, or for another scorer config). Damaged files raise
    :class:`DataError` naming them.

    Shape:
        features: (K, N, P) the index's features (the per-clip features when the scorer has no step).
    """
    data_dir = Path(data_dir)
    if not is_stored(data_dir, scorer_config, int(features.shape[1])):
        return None
    folder = data_dir / SCORING
    record = _record(data_dir)
    per_clip = record.get("per_clip_scorer")
    per_clip_scorer = scorer if per_clip is None else host.build("scorer", per_clip)
    try:
        per_clip_features = (
            features if per_clip is None else np.load(folder / PER_CLIP_FEATURES, mmap_mode="r")
        )
    except (OSError, ValueError) as error:
        raise DataError(
            f"{folder / PER_CLIP_FEATURES}: cannot be read ({error}); run `mwga index` again."
        ) from None
    if per_clip_features.shape[:2] != features.shape[:2]:
        raise DataError(
            f"{folder / PER_CLIP_FEATURES}: holds {per_clip_features.shape[1]} clips of "
            f"{per_clip_features.shape[0]} checkpoints, the index {features.shape[1]} of "
            f"{features.shape[0]}; run `mwga index` again."
        )
    search = RetrievalIndex.load(folder / SEARCH_INDEX) if record.get("search") else None
    if search is not None and search.count != features.shape[1]:
        raise DataError(
            f"{folder / SEARCH_INDEX}: holds {search.count} rows for {features.shape[1]} clips; "
            "run `mwga index` again."
        )
    return PreparedScoring(per_clip_scorer, per_clip_features, search)
