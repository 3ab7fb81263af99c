"""``mwga attribute <index-dir> <query...> [--top-k 20] [--out DIR] [--percentile P] [--votes-k K]
[--caption TEXT] [--html]``.

Ranks the clips of an index (made by ``mwga index``) for one or several query videos with
:mod:`mwga_core.retrieval.attribute`, prints a table per query, writes attribution.json/.csv, the
selected subset of several queries' majority vote, one contact sheet per query and, with ``--html``,
report.html (:mod:`mwga_core.reporting.html_report`): all of them or, when anything fails (a query that
cannot be read or shows no motion, a full disk), none.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from mwga_core.api.context import RunContext
from mwga_core.api.datasets import require_clip_reader
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.progress import progress_wanted
from mwga_core.api.scorers import Scorer
from mwga_core.cli.messages import stderr
from mwga_core.config.compose import from_container
from mwga_core.config.schema import cache_path
from mwga_core.plugin_host.host import get_host
from mwga_core.reporting.run_outputs import table_console
from mwga_core.retrieval.attribute import (
    Attribution,
    attribute,
    clip_label,
    featurize_queries,
    index_clip_frames,
    output_files,
    query_sheet_row,
    safe_name,
    sheet_rows,
    stored_scoring,
    write_all_or_none,
)
from mwga_core.storage.index_store import IndexData, load_index

#: vote-subset clips report.html shows at most
HTML_SELECTED = 20


def make_parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--caption",
        default=None,
        help="the queries' text prompt, for a text-conditioned model (model=diffusers: sets model.prompt)",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write report.html: queries, flow and top clips looping, score bars, region maps",
    )
    return parser


def check_options(options: argparse.Namespace) -> None:
    """Refuse out-of-range options before any work."""
    if options.top_k < 1:
        raise ConfigValueError("--top-k", options.top_k, "an integer >= 1")
    if not 0.0 <= options.percentile < 100.0:
        raise ConfigValueError("--percentile", options.percentile, "a number in [0, 100)")
    if not 0.0 < options.select_fraction <= 1.0:
        raise ConfigValueError("--select-fraction", options.select_fraction, "a number in (0, 1]")
    if options.votes_k is not None and options.votes_k < 1:
        raise ConfigValueError("--votes-k", options.votes_k, "an integer >= 1")
    if options.out is not None and options.out.exists() and not options.out.is_dir():
        raise ConfigValueError("--out", str(options.out), "a folder (this is a file)")


@dataclass
class Cutoffs:
    """How many clips each list holds, capped by the index's size."""

    top_k: int
    votes_k: int

    @classmethod
    def for_index(cls, options: argparse.Namespace, count: int) -> Cutoffs:
        votes_k = options.votes_k or math.ceil(options.select_fraction * count)
        return cls(min(options.top_k, count), min(count, votes_k))


def print_rankings(result: Attribution, index: IndexData, top_k: int) -> None:
    """One table per query: rank, clip, label (when the index has labels), score."""
    stdout = table_console()
    labelled = any(c.get("label") for c in index.clips)
    scorer = index.manifest["config"]["scorer"]["name"]
    for q, query_id in enumerate(result.query_ids):
        table = Table(
            title=f"{query_id}: top {top_k} of {len(index.clips)} clips ({scorer})", title_justify="left"
        )
        table.add_column("Rank", justify="right")
        table.add_column("Clip")
        if labelled:
            table.add_column("Label")
        table.add_column("Score", justify="right")
        for rank, (row, score) in enumerate(
            zip(result.top_rows[q], result.top_scores[q], strict=True), start=1
        ):
            cells = [str(rank), index.clips[row]["id"]] + ([clip_label(index, row)] if labelled else [])
            table.add_row(*cells, f"{score:.4f}")
        stdout.print(table)


def contact_sheets(result, index, queries, components, ctx: RunContext, shown: int) -> dict[str, bytes]:
    """``contact_<q>_<query>.png`` (name -> PNG bytes): the query, then its ``shown`` top clips with
    their flow."""
    from mwga_core.reporting.contact_sheet import render_contact_sheet

    sheets = {}
    for q, query_id in enumerate(result.query_ids):
        rows = sheet_rows(index, result.top_rows[q, :shown], result.top_scores[q, :shown], components, ctx)
        sheets[f"contact_{q:02d}_{safe_name(query_id)}.png"] = render_contact_sheet(
            query_sheet_row(queries, q), rows
        )
    return sheets


def all_clip_scores(query: np.ndarray, train: np.ndarray, scorer: Scorer, ctx: RunContext) -> np.ndarray:
    """Every indexed clip's score, a block of clips at a time (``scorer`` after its whole-index step
    scores any subset as the whole). Shape: query (K, Q, P), train (K, N, P) -> (Q, N) float64."""
    block = 4096
    return np.concatenate(
        [
            np.asarray(scorer.score(query, train[:, start : start + block], ctx), dtype=np.float64)
            for start in range(0, train.shape[1], block)
        ],
        axis=1,
    )


def html_report(result, index, queries, features, components, prepared, ctx: RunContext) -> str:
    """report.html: each query with its flow, motion mask (MOTIVE's ``weighting=mask``), top clips, score
    distribution and per-region maps (:mod:`mwga_core.retrieval.regions`), and the vote subset."""
    from mwga_core.diffusion.objectives import motion_mask
    from mwga_core.reporting.html_report import ReportPage, ShownClip, ShownQuery, render_page
    from mwga_core.retrieval import regions

    config = index.manifest["config"]
    if prepared is not None:
        scorer, train = prepared.scorer, prepared.features
    else:
        scorer, train = components.scorer.per_clip(index.features, ctx)
    scores = all_clip_scores(features, train, scorer, ctx)
    reader = require_clip_reader(components.dataset)
    rows = {int(r) for r in result.top_rows.ravel()} | {int(r) for r in result.selected[:HTML_SELECTED]}
    frames = {row: index_clip_frames(index, row, reader) for row in sorted(rows)}

    def shown(row: int, score: float, **extra) -> ShownClip:
        clip_id = index.clips[row]["id"]
        return ShownClip(clip_id, clip_id, float(score), frames[int(row)], clip_label(index, row), **extra)

    layout = regions.region_layout(components.gradient.config)
    maps: np.ndarray | str = layout if isinstance(layout, str) else ""
    if not isinstance(layout, str):
        try:
            cells = regions.query_region_features(
                components.gradient, components.projector, queries, layout, ctx
            )
        except ValueError as error:  # not the (parts, cells, D) layout: say so, draw nothing
            maps = f"{error}: no per-region map"
        else:
            top_train = [train[:, top] for top in result.top_rows]
            maps = regions.region_contributions(cells, features, top_train, result.top_scores, scorer)
    page = ReportPage(
        f"mwga attribute: {len(result.query_ids)} {'query' if len(result.query_ids) == 1 else 'queries'}",
        [("index", str(index.path)), ("clips", str(len(index.clips))), ("scorer", config["scorer"]["name"])],
        notes=[maps if isinstance(maps, str) else regions.region_note(layout[1])],
    )
    masked = getattr(components.gradient.config, "weighting", None) == "mask" and queries.flows is not None
    clips = queries.clips
    for q, query_id in enumerate(result.query_ids):
        top = [
            shown(row, score, regions=None if isinstance(maps, str) else maps[q, j].reshape(layout[1], -1))
            for j, (row, score) in enumerate(zip(result.top_rows[q], result.top_scores[q], strict=True))
        ]
        flow = None if queries.flows is None else queries.flows[q]
        query = ShownQuery(
            query_id, clips.frames[q], flow, scores[q], top, flow_title=f"flow ({config['motion']['name']})"
        )
        if masked:
            query.mask = motion_mask(queries.flows[q : q + 1], clips.frames.shape[1:4])[0]
        page.queries.append(query)
    if len(result.query_ids) > 1:
        selected = result.selected[:HTML_SELECTED]
        page.selected = [
            shown(row, mean, votes=int(result.votes[row]))
            for row, mean in zip(selected, result.selected_mean_scores, strict=False)
        ]
        page.selected_title = f"Majority-vote subset: {len(selected)} of {len(result.selected)} clips"
    return render_page(page)


def attribute_command(args: list[str]) -> int:
    """``mwga attribute``: featurize the queries with the index's config, rank, vote, write the outputs."""
    options = make_parser().parse_intermixed_args(args)
    check_options(options)
    index = load_index(options.index_dir)
    host = get_host()
    cfg = from_container(index.manifest["config"], host=host)
    if options.caption is not None:
        if not hasattr(cfg.model, "prompt"):
            raise ConfigValueError(
                "--caption", options.caption, "none: the index's model takes no text prompt"
            )
        cfg.model.prompt = options.caption  # only the queries are featurized: the caption is theirs
    out = options.out or Path("outputs/attribute") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        output_dir=out,
        show_progress=progress_wanted(stderr),
        console=stderr,
    )
    start = time.perf_counter()
    components, queries, features = featurize_queries(options.queries, index, cfg, ctx, host)
    cut = Cutoffs.for_index(options, len(index.clips))
    prepared = stored_scoring(index, components.scorer, ctx, host)
    result = attribute(
        features,
        index.features,
        components.scorer,
        ctx,
        queries.clips.ids,
        cut.top_k,
        options.percentile,
        cut.votes_k,
        prepared,
    )
    # every output is made in memory first, then written all together: all files or none
    files = output_files(
        result, index, {"top_k": cut.top_k, "percentile": options.percentile, "votes_k": cut.votes_k}
    )
    if options.sheet_rows > 0:
        files |= contact_sheets(result, index, queries, components, ctx, min(options.sheet_rows, cut.top_k))
    if options.html:
        files["report.html"] = html_report(
            result, index, queries, features, components, prepared, ctx
        ).encode()
    write_all_or_none(out, files)
    print_rankings(result, index, cut.top_k)
    stdout = table_console()
    if len(result.query_ids) > 1:
        stdout.print(
            f"majority vote of {len(result.query_ids)} queries (percentile {options.percentile:g}): "
            f"{len(result.selected)} clips in selected_subset.txt"
        )
    stdout.print(f"[dim]outputs: {out} ({time.perf_counter() - start:.1f} s)[/dim]")
    return 0
