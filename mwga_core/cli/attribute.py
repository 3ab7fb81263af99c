"""``mwga attribute <index-dir> <query...> [--top-k 20] [--out DIR] [--percentile P] [--votes-k K]
[--caption TEXT]``.

Ranks the clips of an index (made by ``mwga index``) for one or several query videos with
:mod:`mwga_core.retrieval.attribute`, prints a table per query, writes attribution.json/.csv, the
selected subset of several queries' majority vote and one contact sheet per query: all of them or, when
anything fails (a query that cannot be read or shows no motion, a full disk), none.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.progress import progress_wanted
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
    output_files,
    query_sheet_row,
    safe_name,
    sheet_rows,
    stored_scoring,
    write_all_or_none,
)
from mwga_core.storage.index_store import IndexData, load_index


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
    result = attribute(
        features,
        index.features,
        components.scorer,
        ctx,
        queries.clips.ids,
        cut.top_k,
        options.percentile,
        cut.votes_k,
        stored_scoring(index, components.scorer, ctx, host),
    )
    # every output is made in memory first, then written all together: all files or none
    files = output_files(
        result, index, {"top_k": cut.top_k, "percentile": options.percentile, "votes_k": cut.votes_k}
    )
    if options.sheet_rows > 0:
        files |= contact_sheets(result, index, queries, components, ctx, min(options.sheet_rows, cut.top_k))
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
