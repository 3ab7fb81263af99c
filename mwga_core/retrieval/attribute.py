"""Rank an indexed corpus for query videos (``mwga attribute``, :mod:`mwga_core.cli.attribute`).

The queries are read, analysed and featurized with exactly the config the index was made with (its
manifest), then scored against every indexed clip with the index's scorer (cosine by default). A scorer
that is an inner product of per-clip vectors (``searchable_by_inner_product``: ``cosine``, ``dot``) gets
its top clips from an exact FAISS search (:mod:`mwga_core.retrieval.faiss_index`) over its
``search_vectors``, rescored exactly in float64 by the scorer; any other scorer scores every clip. The
index's dataset must read clip files (:class:`~mwga_core.api.datasets.ClipReader`).

Several queries: MOTIVE's majority vote. Query q votes for the clips it ranks in its top
``ceil((1 - percentile / 100) * N)`` (its scores above its ``percentile``-th percentile, ties by lower
row); the clips with at least one vote are ordered by votes, then by mean score over the queries, and the
first ``votes_k`` (or ``ceil(select_fraction * N)``) form the selected fine-tuning subset.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.datasets import ClipFile, ClipReader, path_text, require_clip_reader
from mwga_core.api.errors import DataError
from mwga_core.api.scorers import Scorer
from mwga_core.config.schema import MwgaConfig
from mwga_core.plugin_host.host import PluginHost
from mwga_core.retrieval.faiss_index import RetrievalIndex
from mwga_core.retrieval.prepared_scoring import (
    SEARCH_MARGIN,
    PreparedScoring,
    load_prepared_scoring,
    search_rows,
)
from mwga_core.storage.atomic import temp_path
from mwga_core.storage.index_store import IndexData


@dataclass
class Attribution:
    """Top clips per query and the vote.

    Shape:
        top_rows, top_scores: (Q, k) int64 index rows and float64 scores, best first.
        votes: (N,) int64 votes per clip; selected: row indices of the selected subset, best first.
        selected_mean_scores: (len(selected),) float64.
    """

    query_ids: list[str]
    top_rows: np.ndarray
    top_scores: np.ndarray
    votes: np.ndarray
    selected: np.ndarray
    selected_mean_scores: np.ndarray


def search(
    query: np.ndarray,
    train: np.ndarray,
    scorer: Scorer,
    ctx: RunContext,
    k: int,
    found: RetrievalIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` training rows of each query and their exact scores, best first (ties: lower row).

    ``found``: the stored search index of ``train`` (:mod:`mwga_core.retrieval.prepared_scoring`); it
    holds float16 rows, so it is asked for ``2 k + SEARCH_MARGIN`` candidates. Without it, an exact
    float32 index of ``train`` is made for this call.

    Shape:
        query: (K, Q, P); train: (K, N, P). returns rows (Q, k) int64, scores (Q, k) float64.
    """
    if scorer.searchable_by_inner_product:
        from mwga_core.retrieval.faiss_index import build_index

        depth = k
        if found is None:
            found = build_index(search_rows(scorer, train), kind="flat", metric="ip")
        else:
            depth = min(train.shape[1], 2 * k + SEARCH_MARGIN)
        # candidates are then rescored in float64 by the scorer itself
        _, candidates = found.search(search_rows(scorer, query), depth)
        exact = np.stack(
            [
                scorer.score(query[:, q : q + 1], train[:, candidates[q]], ctx)[0]
                for q in range(query.shape[1])
            ]
        )
    else:
        scores = np.asarray(scorer.score(query, train, ctx), dtype=np.float64)
        candidates = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        exact = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -exact), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)


def attribute(
    query: np.ndarray,
    train: np.ndarray,
    scorer: Scorer,
    ctx: RunContext,
    query_ids: list[str],
    top_k: int,
    percentile: float,
    votes_k: int,
    prepared: PreparedScoring | None = None,
) -> Attribution:
    """Top-k per query and MOTIVE's majority vote (see the module docstring).

    ``prepared``: the scorer's whole-index step and search index as ``mwga index`` stored them; None
    computes the step here, on all of ``train``.

    Shape:
        query: (K, Q, P); train: (K, N, P).
    """
    found = None
    if prepared is None:  # the subsets below must score as the whole set does
        scorer, train = scorer.per_clip(train, ctx)
    else:
        scorer, train, found = prepared.scorer, prepared.features, prepared.search
    count = train.shape[1]
    vote_depth = max(1, math.ceil((1.0 - percentile / 100.0) * count))
    rows, scores = search(query, train, scorer, ctx, min(count, max(top_k, vote_depth)), found)
    votes = np.zeros(count, dtype=np.int64)
    for q in range(len(rows)):
        votes[rows[q, :vote_depth]] += 1
    voted = np.flatnonzero(votes)
    mean_scores = np.asarray(scorer.score(query, train[:, voted], ctx), dtype=np.float64).mean(axis=0)
    order = np.lexsort((voted, -mean_scores, -votes[voted]))[:votes_k]
    return Attribution(query_ids, rows[:, :top_k], scores[:, :top_k], votes, voted[order], mean_scores[order])


def stored_scoring(
    index: IndexData, scorer: Scorer, ctx: RunContext, host: PluginHost
) -> PreparedScoring | None:
    """The scorer's whole-index step and search index as ``mwga index`` stored them for ``scorer``, or
    None (with a note) for an index made before mwga stored them: :func:`attribute` then computes them."""
    prepared = load_prepared_scoring(
        index.path / index.manifest["data"], scorer, index.manifest["config"]["scorer"], index.features, host
    )
    if prepared is None:
        ctx.console.print(
            f"[yellow]note:[/] {index.path} holds no stored scoring step for its scorer (made by an older "
            "mwga): computing it now. Run `mwga index` on the corpus again to store it."
        )
    return prepared


def _prepared_components(index: IndexData, cfg: MwgaConfig, ctx: RunContext, host: PluginHost):
    """Components of the index's config; a source that uses a model gets the model of the corpus again
    (from the model store: the ``model`` stage on the indexed clips)."""
    from mwga_core.pipeline.model_stage import prepare_gradient_source
    from mwga_core.pipeline.run import analyse, build_components

    components = build_components(cfg, host)
    if components.gradient.uses_model:
        corpus = Path(index.manifest["corpus_dir"])
        files = [
            require_clip_reader(components.dataset).clip_at(corpus / c["id"], c["id"]) for c in index.clips
        ]
        if any(f is None for f in files):
            raise DataError(f"{corpus}: clips of the index are gone; run `mwga index` again.")
        frames, kept, _ = components.dataset.read_clips(files)
        names = index.manifest["class_names"]
        labels = [names.index(c["label"]) if c.get("label") in names else -1 for c in index.clips]
        train = ClipSet(frames=frames, labels=np.array(labels, dtype=np.int64), ids=[f.id for f in kept])
        analysed = analyse(train, components, ctx, cfg.static_threshold)
        prepare_gradient_source(components.gradient, components.model, analysed, ctx)
        if components.gradient.checkpoint_id() != index.manifest["checkpoint_id"]:
            raise DataError(
                f"{corpus}: the model trained on the corpus now differs from the index's "
                f"({components.gradient.checkpoint_id()} vs {index.manifest['checkpoint_id']}); "
                "run `mwga index` again."
            )
    return components


def query_files(reader: ClipReader, paths: list[str]) -> list[ClipFile]:
    """The clip of each query path (its id: the path as given); a missing or repeated file raises."""
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if not (path.exists() or path.is_symlink()):  # a broken link is found, then refused by the reader
            raise DataError(f"{path_text(path)}: query file not found.")
        clip = reader.clip_at(path, str(name))
        if clip is None:
            raise DataError(
                f"{path_text(path)}: not a clip the index's dataset {reader.config.name!r} can read."
            )
        files.append(clip)
    if len({f.id for f in files}) != len(files):
        raise DataError("the same query file is given twice.")
    return files


def featurize_queries(paths: list[str], index: IndexData, cfg: MwgaConfig, ctx: RunContext, host: PluginHost):
    """Read, analyse and featurize query files with the index's config ``cfg``.

    Returns the components, the analysed queries and their (K, Q, P) features.
    """
    from mwga_core.pipeline.featurize import LocalExecutor, featurize
    from mwga_core.pipeline.run import _refuse_static_queries, analyse

    components = _prepared_components(index, cfg, ctx, host)
    reader = require_clip_reader(components.dataset)
    files = query_files(reader, paths)
    # read one by one: a query that cannot be read is always an error, whatever the index's policy
    frames = np.stack([reader.read_clip(clip) for clip in files])
    clips = ClipSet(frames=frames, labels=np.full(len(files), -1, dtype=np.int64), ids=[f.id for f in files])
    queries = analyse(clips, components, ctx, cfg.static_threshold)
    _refuse_static_queries(queries, cfg.static_threshold)
    executor = LocalExecutor(components.gradient, components.projector, ctx)
    return components, queries, featurize(queries, executor, ctx)


def clip_label(index: IndexData, row: int) -> str:
    """The label of index row ``row``, "" when it has none."""
    return index.clips[row].get("label") or ""


def index_clip_frames(index: IndexData, row: int, reader: ClipReader) -> np.ndarray | None:
    """The frames of index row ``row``, read again from the corpus; None when its file is gone or no
    longer readable. Shape: returns (T, H, W, C) float32."""
    clip_id = index.clips[row]["id"]
    path = Path(index.manifest["corpus_dir"]) / clip_id
    clip = reader.clip_at(path, clip_id) if path.exists() else None
    try:
        return None if clip is None else reader.read_clip(clip)
    except DataError:
        return None


def sheet_rows(index: IndexData, rows: np.ndarray, scores: np.ndarray, components, ctx: RunContext):
    """Contact-sheet rows for index rows: frames re-read from the corpus, flow stored or re-estimated."""
    from mwga_core.reporting.contact_sheet import SheetRow

    reader = require_clip_reader(components.dataset)
    sheet = []
    for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1):
        clip_id = index.clips[row]["id"]
        label = clip_label(index, row)
        title = f"#{rank}  score {score:+.4f}  {clip_id}" + (f"  [{label}]" if label else "")
        frames = index_clip_frames(index, row, reader)
        if frames is None:
            sheet.append(SheetRow(title + "  (file no longer readable)", None, None))
            continue
        if index.flows is not None:
            flow = np.asarray(index.flows[row], dtype=np.float32)
        elif components.motion.produces_flow:
            flow = components.motion.estimate(frames[None], ctx)[0]
        else:
            flow = None
        sheet.append(SheetRow(title, frames, flow))
    return sheet


def query_sheet_row(queries: AnalysedClips, q: int):
    """The contact sheet's first row: query ``q``'s frames and flow."""
    from mwga_core.reporting.contact_sheet import SheetRow

    flow = queries.flows[q] if queries.flows is not None else None
    return SheetRow(f"query {queries.clips.ids[q]}", queries.clips.frames[q], flow)


def safe_name(text: str) -> str:
    """A file-name-safe stem of a query path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name).strip("_") or "query"


def output_files(result: Attribution, index: IndexData, settings: dict) -> dict[str, bytes]:
    """The contents of attribution.json, attribution.csv and, for several queries,
    selected_subset.{txt,json}, by file name; DataError when a clip id cannot be written as UTF-8 (an
    index made before mwga refused such file names)."""
    document = {
        "index": str(index.path),
        "index_clips": len(index.clips),
        "scorer": index.manifest["config"]["scorer"]["name"],
        "overrides": index.manifest.get("overrides", []),
        **settings,
        "queries": [
            {
                "query": query_id,
                "top": [
                    {
                        "rank": rank,
                        "clip_id": index.clips[row]["id"],
                        "label": clip_label(index, row) or None,
                        "score": float(score),
                    }
                    for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
                ],
            }
            for query_id, rows, scores in zip(
                result.query_ids, result.top_rows, result.top_scores, strict=True
            )
        ],
    }
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["query", "rank", "clip_id", "label", "score"])
    for entry in document["queries"]:
        for top in entry["top"]:
            writer.writerow(
                [entry["query"], top["rank"], top["clip_id"], top["label"] or "", repr(top["score"])]
            )
    texts = {"attribution.json": json.dumps(document, indent=2) + "\n", "attribution.csv": table.getvalue()}
    if len(result.query_ids) > 1:
        selected = [
            {
                "clip_id": index.clips[row]["id"],
                "label": clip_label(index, row) or None,
                "votes": int(result.votes[row]),
                "mean_score": float(mean),
            }
            for row, mean in zip(result.selected, result.selected_mean_scores, strict=True)
        ]
        subset = {"queries": result.query_ids, **settings, "clips": selected}
        texts["selected_subset.json"] = json.dumps(subset, indent=2) + "\n"
        texts["selected_subset.txt"] = "".join(c["clip_id"] + "\n" for c in selected)
    files = {}
    for name, text in texts.items():
        try:
            files[name] = text.encode("utf-8")
        except UnicodeEncodeError as error:
            text = error.object  # name the field (a clip id) that holds the bad character
            first = max(text.rfind(mark, 0, error.start) for mark in '\n,"') + 1
            last = min(
                (i for i in (text.find(mark, error.end) for mark in '\n,"') if i >= 0), default=len(text)
            )
            raise DataError(
                f"{index.path}: the clip id {path_text(text[first:last])!r} is not valid UTF-8, so {name} "
                "cannot be written; rename the file and run `mwga index` again (it now refuses such names)."
            ) from None
    return files


def write_all_or_none(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) into the folder ``out``: every file whole, or none of them.

    Each file is written under a temporary name beside its final one (:func:`temp_path`); only when all
    are written are they renamed onto their names, so a failure (a full disk, a read-only folder) leaves
    no output of this run, and a killed run at most some whole new files beside whole old ones. An
    ``OSError`` becomes a DataError naming the folder.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            staged.append((temp_path(out / name), out / name))
            staged[-1][0].write_bytes(data)
        for temporary, final in staged:
            os.replace(temporary, final)
    except OSError as error:
        raise DataError(
            f"{path_text(out)}: the outputs cannot be written ({error.strerror or error}); none were."
        ) from None
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
