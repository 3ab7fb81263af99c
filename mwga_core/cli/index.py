"""``mwga index <corpus-dir> --out <index-dir> [--keep-flows] [--batch-size N] [--rebuild] [overrides]``.

Featurizes a folder of clips once into a persistent, incremental index
(:func:`mwga_core.retrieval.index.index_corpus`). The overrides are those of ``mwga``, composed from the
root config ``conf/index.yaml`` (``mwga``'s config with ``dataset=video_folder``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from mwga_core.api.context import RunContext
from mwga_core.api.progress import progress_wanted
from mwga_core.cli.messages import stderr, warn_plugin_problems
from mwga_core.config.compose import compose
from mwga_core.config.schema import cache_path
from mwga_core.plugin_host.host import get_host
from mwga_core.retrieval.index import IndexSummary, index_corpus

#: the root config of ``conf/`` that ``mwga index`` composes
INDEX_CONFIG = "index"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga index",
        description="Featurize a folder of clips once into a persistent, incremental index. Overrides are "
        "the same as for `mwga` (e.g. descriptor=hoof_grid gradient=simulated dataset.size=[64]).",
    )
    parser.add_argument("corpus_dir", type=Path, help="folder of training clips (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="the index folder (created or updated)")
    parser.add_argument("--keep-flows", action="store_true", help="also store every clip's optical flow")
    parser.add_argument("--batch-size", type=int, default=256, help="clips per resumable batch (256)")
    parser.add_argument("--rebuild", action="store_true", help="discard an existing index and start over")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `mwga`")
    return parser


def print_summary(summary: IndexSummary) -> None:
    """Skipped files and static clips on stderr, the counts on stdout."""
    # one line each however long (soft_wrap), with file names' square brackets kept (escape)
    for skipped in summary.skipped:
        stderr.print(f"[yellow]skipped:[/] {escape(skipped['reason'])}", highlight=False, soft_wrap=True)
    if summary.static_ids:
        stderr.print(
            f"[yellow]warning:[/] {len(summary.static_ids)} clip(s) show no motion: "
            + escape(", ".join(summary.static_ids[:5]))
            + (" ..." if len(summary.static_ids) > 5 else ""),
            highlight=False,
            soft_wrap=True,
        )
    print(
        f"indexed {summary.total} clips into {summary.path}: {summary.computed} computed, {summary.reused} "
        f"reused, {summary.removed} removed, {len(summary.skipped)} skipped ({summary.seconds:.1f} s)"
    )


def index_command(args: list[str]) -> int:
    """``mwga index``: compose the config, bring the index up to date, print what was done."""
    options = make_parser().parse_intermixed_args(args)
    host = get_host()
    warn_plugin_problems(host)
    cfg = compose(options.overrides, host=host, config_name=INDEX_CONFIG)
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        output_dir=options.out,
        show_progress=progress_wanted(stderr),
        console=stderr,
    )
    summary = index_corpus(
        options.corpus_dir,
        options.out,
        cfg,
        ctx,
        host,
        keep_flows=options.keep_flows,
        batch_size=options.batch_size,
        rebuild=options.rebuild,
        overrides=options.overrides,
    )
    print_summary(summary)
    return 0
