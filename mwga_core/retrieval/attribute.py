"""``mwga attribute <index> <query video(s)...>``: rank an indexed corpus for query videos.

The queries are read, analysed and featurized with exactly the config the index was made with (its
manifest), then scored against every indexed clip with the index's scorer (cosine by default). For the
inner-product scorers (``cosine``, ``dot``) the top clips come from an exact FAISS search
(:mod:`mwga_core.retrieval.faiss_index`) and are then rescored exactly in float64; other scorers score every clip.

Several queries: MOTIVE's majority vote. Query q votes for the clips it ranks in its top
``ceil((1 - percentile / 100) * N)`` (its scores above its ``percentile``-th percentile, ties by lower
row); the clips with at least one vote are ordered by votes, then by mean score over the queries, and the
first ``votes_k`` (or ``ceil(select_fraction * N)``) form the selected fine-tuning subset.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.storage.index_store import IndexData, load_index

#: scorers whose score is a mean over checkpoints of an inner product, so an exact FAISS search ranks them
INNER_PRODUCT_SCORERS = ("cosine", "dot")


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
    query: np.ndarray, train: np.ndarray, scorer, ctx: RunContext, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` training rows of each query and their exact scores, best first (ties: lower row).

    Shape:
        query: (K, Q, P); train: (K, N, P). returns rows (Q, k) int64, scores (Q, k) float64.
    """
    name = scorer.config.name
    if name in INNER_PRODUCT_SCORERS:
        from mwga_core.retrieval.faiss_index import build_index

        def rows(features: np.ndarray) -> np.ndarray:  # (K, n, P) -> (n, K*P); mean over K = IP / K
            if name == "cosine":
                norms = np.linalg.norm(features, axis=-1, keepdims=True)
                features = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
            return np.concatenate(list(features), axis=1)

        # exact inner product; candidates are then rescored in float64 by the scorer itself
        found = build_index(rows(np.asarray(train, dtype=np.float32)), kind="flat", metric="ip")
        _, candidates = found.search(rows(np.asarray(query, dtype=np.float32)), k)
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
    order = np.lexsort((candidates, -exact), axis=1)
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)


def attribute(
    query: np.ndarray,
    train: np.ndarray,
    scorer,
    ctx: RunContext,
    query_ids: list[str],
    top_k: int,
    percentile: float,
    votes_k: int,
) -> Attribution:
    """Top-k per query and MOTIVE's majority vote (see the module docstring).

    Shape:
        query: (K, Q, P); train: (K, N, P).
    """
    scorer, train = scorer.per_clip(train, ctx)  # the subsets below must score as the whole set does
    count = train.shape[1]
    vote_depth = max(1, math.ceil((1.0 - percentile / 100.0) * count))
    rows, scores = search(query, train, scorer, ctx, min(count, max(top_k, vote_depth)))
    votes = np.zeros(count, dtype=np.int64)
    for q in range(len(rows)):
        votes[rows[q, :vote_depth]] += 1
    voted = np.flatnonzero(votes)
    mean_scores = np.asarray(scorer.score(query, train[:, voted], ctx), dtype=np.float64).mean(axis=0)
    order = np.lexsort((voted, -mean_scores, -votes[voted]))[:votes_k]
    return Attribution(query_ids, rows[:, :top_k], scores[:, :top_k], votes, voted[order], mean_scores[order])


def _prepared_components(index: IndexData, ctx: RunContext, host: PluginHost):
    """Components of the index's config; a source that uses a model gets the model of the corpus again
    (from the model store: the ``model`` stage on the indexed clips)."""
    from mwga_core.pipeline.model_stage import prepare_gradient_source
    from mwga_core.pipeline.run import analyse, build_components

    cfg = index.config
    components = build_components(cfg, host)
    if components.gradient.uses_model:
        from mwga_plugins.datasets.video_folder import clip_file

        corpus = Path(index.manifest["corpus_dir"])
        files = [clip_file(corpus / c["id"], c["id"]) for c in index.clips]
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


def featurize_queries(paths: list[str], index: IndexData, ctx: RunContext, host: PluginHost):
    """Read, analyse and featurize query files with the index's config.

    Returns the components, the analysed queries and their (K, Q, P) features.
    """
    from mwga_plugins.datasets.video_folder import clip_file

    from mwga_core.pipeline.featurize import LocalExecutor, featurize
    from mwga_core.pipeline.run import _refuse_static_queries, analyse

    components = _prepared_components(index, ctx, host)
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(f"{path}: query file not found.")
        clip = clip_file(path, str(name))
        if clip is None:
            raise DataError(f"{path}: not a clip (a video file, a .npy array or a folder of image frames).")
        files.append(clip)
    if len({f.id for f in files}) != len(files):
        raise DataError("the same query file is given twice.")
    dataset = components.dataset
    dataset.config.on_error = "raise"  # a query that cannot be read is always an error
    frames, kept, _ = dataset.read_clips(files)
    clips = ClipSet(frames=frames, labels=np.full(len(kept), -1, dtype=np.int64), ids=[f.id for f in kept])
    queries = analyse(clips, components, ctx, index.config.static_threshold)
    _refuse_static_queries(queries, index.config.static_threshold)
    executor = LocalExecutor(components.gradient, components.projector, ctx)
    return components, queries, featurize(queries, executor, ctx)


def _label(index: IndexData, row: int) -> str:
    return index.clips[row].get("label") or ""


def _sheet_rows(index: IndexData, rows: np.ndarray, scores: np.ndarray, components, ctx: RunContext):
    """Contact-sheet rows for index rows: frames re-read from the corpus, flow stored or re-estimated."""
    from mwga_plugins.datasets.video_folder import clip_file

    from mwga_core.reporting.contact_sheet import SheetRow

    corpus = Path(index.manifest["corpus_dir"])
    sheet = []
    for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1):
        clip_id = index.clips[row]["id"]
        label = _label(index, row)
        title = f"#{rank}  score {score:+.4f}  {clip_id}" + (f"  [{label}]" if label else "")
        clip = clip_file(corpus / clip_id, clip_id) if (corpus / clip_id).exists() else None
        try:
            frames = None if clip is None else components.dataset.read_clip(clip)
        except DataError:
            frames = None
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


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name).strip("_") or "query"


def write_outputs(result: Attribution, index: IndexData, out: Path, settings: dict) -> dict:
    """attribution.json, attribution.csv and, for several queries, selected_subset.{txt,json}."""
    out.mkdir(parents=True, exist_ok=True)
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
                        "label": _label(index, row) or None,
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
    (out / "attribution.json").write_text(json.dumps(document, indent=2) + "\n")
    with open(out / "attribution.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "rank", "clip_id", "label", "score"])
        for entry in document["queries"]:
            for top in entry["top"]:
                writer.writerow(
                    [entry["query"], top["rank"], top["clip_id"], top["label"] or "", repr(top["score"])]
                )
    if len(result.query_ids) > 1:
        selected = [
            {
                "clip_id": index.clips[row]["id"],
                "label": _label(index, row) or None,
                "votes": int(result.votes[row]),
                "mean_score": float(mean),
            }
            for row, mean in zip(result.selected, result.selected_mean_scores, strict=True)
        ]
        subset = {"queries": result.query_ids, **settings, "clips": selected}
        (out / "selected_subset.json").write_text(json.dumps(subset, indent=2) + "\n")
        (out / "selected_subset.txt").write_text("".join(c["clip_id"] + "\n" for c in selected))
    return document


def attribute_command(args: list[str]) -> int:
    """``mwga attribute <index-dir> <query...> [--top-k 20] [--out DIR] [--percentile P] [--votes-k K]``."""
    from rich.console import Console
    from rich.table import Table

    from mwga_core.api.progress import progress_wanted
    from mwga_core.config.schema import CacheConfig, cache_path
    from mwga_core.reporting.contact_sheet import SheetRow, write_contact_sheet
    from mwga_core.reporting.run_outputs import table_console

    parser = argparse.ArgumentParser(
        prog="mwga attribute",
        description="Rank the clips of an index (made by `mwga index`) for one or several query videos.",
    )
    parser.add_argument("index_dir", type=Path, help="the index folder")
    parser.add_argument("queries", nargs="+", help="query videos, .npy arrays or image-frame folders")
    parser.add_argument("--top-k", type=int, default=20, help="clips listed per query (20)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (outputs/attribute/<date>/<time>)"
    )
    parser.add_argument("--percentile", type=float, default=90.0, help="vote threshold per query (90)")
    parser.add_argument(
        "--select-fraction", type=float, default=0.1, help="subset size as a fraction of N (0.1)"
    )
    parser.add_argument(
        "--votes-k", type=int, default=None, help="subset size in clips (overrides the fraction)"
    )
    parser.add_argument(
        "--sheet-rows", type=int, default=8, help="top clips drawn per contact sheet (8; 0 = none)"
    )
    options = parser.parse_intermixed_args(args)
    if options.top_k < 1:
        raise ConfigValueError("--top-k", options.top_k, "an integer >= 1")
    if not 0.0 <= options.percentile < 100.0:
        raise ConfigValueError("--percentile", options.percentile, "a number in [0, 100)")
    if not 0.0 < options.select_fraction <= 1.0:
        raise ConfigValueError("--select-fraction", options.select_fraction, "a number in (0, 1]")
    if options.votes_k is not None and options.votes_k < 1:
        raise ConfigValueError("--votes-k", options.votes_k, "an integer >= 1")

    console, stdout = Console(stderr=True), table_console()
    index = load_index(options.index_dir)
    cfg = index.config
    out = options.out or Path("outputs/attribute") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(OmegaConf.structured(CacheConfig)),
        output_dir=out,
        show_progress=progress_wanted(console),
        console=console,
    )
    host = get_host()
    start = time.perf_counter()
    components, queries, features = featurize_queries(options.queries, index, ctx, host)
    count = len(index.clips)
    top_k = min(options.top_k, count)
    votes_k = min(count, options.votes_k or math.ceil(options.select_fraction * count))
    result = attribute(
        features,
        index.features,
        components.scorer,
        ctx,
        queries.clips.ids,
        top_k,
        options.percentile,
        votes_k,
    )
    settings = {"top_k": top_k, "percentile": options.percentile, "votes_k": votes_k}
    write_outputs(result, index, out, settings)

    labelled = any(c.get("label") for c in index.clips)
    for q, query_id in enumerate(result.query_ids):
        table = Table(
            title=f"{query_id}: top {top_k} of {count} clips ({index.manifest['config']['scorer']['name']})",
            title_justify="left",
        )
        table.add_column("Rank", justify="right")
        table.add_column("Clip")
        if labelled:
            table.add_column("Label")
        table.add_column("Score", justify="right")
        for rank, (row, score) in enumerate(
            zip(result.top_rows[q], result.top_scores[q], strict=True), start=1
        ):
            cells = [str(rank), index.clips[row]["id"]] + ([_label(index, row)] if labelled else [])
            table.add_row(*cells, f"{score:.4f}")
        stdout.print(table)
        if options.sheet_rows > 0:
            shown = min(options.sheet_rows, top_k)
            rows = _sheet_rows(
                index, result.top_rows[q, :shown], result.top_scores[q, :shown], components, ctx
            )
            query_row = SheetRow(
                f"query {query_id}",
                queries.clips.frames[q],
                queries.flows[q] if queries.flows is not None else None,
            )
            write_contact_sheet(out / f"contact_{q:02d}_{_safe_name(query_id)}.png", query_row, rows)
    if len(result.query_ids) > 1:
        stdout.print(
            f"majority vote of {len(result.query_ids)} queries (percentile {options.percentile:g}): "
            f"{len(result.selected)} clips in selected_subset.txt"
        )
    stdout.print(f"[dim]outputs: {out} ({time.perf_counter() - start:.1f} s)[/dim]")
    return 0
