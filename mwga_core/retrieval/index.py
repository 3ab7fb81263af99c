"""A persistent, incremental, resumable index of a corpus folder: ``mwga index <corpus> --out <index>``.

The folder layout and how it is written (atomically, under a lock) are in
:mod:`mwga_core.storage.index_store`. A clip is identified by its id (path relative to the corpus
folder), file size and modification time (summed / newest over the frames of an image folder). A run
scans the folder, reuses the rows of every clip whose identity is in the consolidated data or in a shard,
computes the others in batches of ``batch_size`` clips, writes each finished batch as a shard, then
gathers the rows of the clips present now into a new ``data-<n>/`` and atomically replaces
``manifest.json``; old data and shards are deleted after that. A killed run therefore loses at most one
batch, files removed from the folder drop out, and edited files are recomputed.

The features depend on the index's *identity* (:func:`index_identity`): the motion, descriptor,
gradient, projection and model configs, the dataset fields that shape the clips (frames, size, colour),
the seed, ``static_threshold``, ``--keep-flows`` and the mwga version. Running again with a different
identity is refused (``--rebuild`` starts over). Rows are reused only under the same *rows key*
(:func:`rows_key`: the identity, the components' code and the gradient source's ``checkpoint_id``, built
by :func:`mwga_core.storage.keys.entry_key` like every cache key): when a component's module is edited,
or a gradient source that uses a model (``uses_model``, e.g. ``gradient=diffusion``: the ``model`` stage
trains it on every clip of the corpus, read in memory first) reports another ``checkpoint_id`` because
the corpus changed, every row is recomputed.

Last, the scorer's whole-index step (``cosine``'s ``neighbours`` augmentation) and the search index of
its vectors are made once and stored beside the rows (:mod:`mwga_core.retrieval.prepared_scoring`),
unless the data folder already holds them for this scorer config; ``mwga attribute`` only loads them.

Featurization is :func:`mwga_core.pipeline.featurize.featurize` on the run's executor
(:func:`mwga_core.pipeline.executors.open_executor`: with ``executor=ray`` Ray actors, started once per
run); reading and analysis stay here. The executor is not part of the identity: it does not change the
rows.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core import __version__
from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.datasets import path_text, require_clip_reader
from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError
from mwga_core.config.schema import MwgaConfig, as_container, group_configs
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.retrieval.prepared_scoring import store_prepared_scoring
from mwga_core.storage.atomic import entry_lock, write_json_atomic
from mwga_core.storage.index_store import (
    FORMAT_VERSION,
    SHARDS,
    RowSource,
    check_index_folder,
    gather_rows,
    open_rows,
    read_manifest,
    write_manifest,
    write_rows,
)
from mwga_core.storage.keys import entry_key

#: the folder of shards inside an index

#: dataset fields that say where clips are or how to treat bad ones; they do not change any feature
DATASET_LOCATION_FIELDS = ("train_dir", "query_dir", "query_files", "labels", "on_error")
FEATURE_GROUPS = ("motion", "descriptor", "gradient", "projection", "model")


class IndexMismatchError(MwgaUserError):
    """The index on disk was made with another config than this run's."""


def index_identity(cfg: MwgaConfig, keep_flows: bool) -> dict[str, Any]:
    """Everything that changes an index's rows, as plain JSON-able data."""
    dataset = as_container(cfg.dataset)
    for name in DATASET_LOCATION_FIELDS:
        dataset.pop(name, None)
    groups = group_configs(cfg, FEATURE_GROUPS)
    return {
        "format": FORMAT_VERSION,
        "mwga_version": __version__,
        "dataset": dataset,
        **groups,
        "seed": int(cfg.seed),
        "static_threshold": float(cfg.static_threshold),
        "keep_flows": bool(keep_flows),
    }


def rows_key(identity: dict[str, Any], components: Any, checkpoint_id: str | None) -> str:
    """The key the index's rows are computed under: identity, the components' code, checkpoint id."""
    code = [
        components.dataset,
        components.motion,
        components.descriptor,
        components.gradient,
        components.projector,
        components.model,
    ]
    return entry_key(
        "index",
        config=identity,
        components=code,
        seed=identity["seed"],
        format_version=FORMAT_VERSION,
        extra={"checkpoint_id": checkpoint_id},
    )


@dataclass
class IndexSummary:
    """What one ``mwga index`` run did."""

    path: Path
    total: int
    reused: int
    computed: int
    removed: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    static_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: index {old!r}, this run {new!r}"]


def index_corpus(
    corpus_dir: str | Path,
    index_dir: str | Path,
    cfg: MwgaConfig,
    ctx: RunContext,
    host: PluginHost | None = None,
    keep_flows: bool = False,
    batch_size: int = 256,
    rebuild: bool = False,
    overrides: list[str] | None = None,
) -> IndexSummary:
    """Bring the index at ``index_dir`` up to date with the clips in ``corpus_dir`` (see module docstring).

    Holds the index's lock (``.<index name>.lock`` beside it) for the whole run, so a second
    ``mwga index`` of the same index waits for the first, then reuses its rows.
    """
    from mwga_core.pipeline.executors import check_executor
    from mwga_core.pipeline.model_stage import prepare_gradient_source
    from mwga_core.pipeline.run import analyse, build_components, check_device

    start = time.perf_counter()
    host = host or get_host()
    corpus_dir, index_dir = Path(corpus_dir).expanduser().resolve(), Path(index_dir).expanduser()
    if batch_size < 1:
        raise ConfigValueError("--batch-size", batch_size, "an integer >= 1")
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it was
    cfg.dataset.train_dir = str(corpus_dir)
    check_index_folder(index_dir, corpus_dir)
    with entry_lock(index_dir):
        manifest = None if rebuild else read_manifest(index_dir)
        if manifest is not None and not cfg.dataset.labels:
            # a later run without dataset.labels keeps the labels the index was given
            cfg.dataset.labels = manifest["config"]["dataset"].get("labels", "")
        components = build_components(cfg, host)
        dataset = require_clip_reader(components.dataset)
        if not components.scorer.uses_features:
            raise ConfigValueError(
                "scorer", cfg.scorer.name, "a scorer that reads features (an index holds features)"
            )
        check_device(cfg.device)
        check_executor(cfg)  # a bad executor value fails before any work

        identity = index_identity(cfg, keep_flows)
        files = dataset.scan(corpus_dir)  # a missing or unreadable corpus fails before --rebuild deletes
        if not files:
            raise DataError(f"{corpus_dir}: no clips found (videos, .npy arrays or folders of frames).")
        if rebuild:
            shutil.rmtree(index_dir, ignore_errors=True)
        if manifest is not None and manifest["identity"] != identity:
            changes = "; ".join(_differences(manifest["identity"], identity)[:6])
            raise IndexMismatchError(
                f"{index_dir} was made with another config ({changes}). Use the same overrides, another --out, "
                "or --rebuild to start over."
            )
        index_dir.mkdir(parents=True, exist_ok=True)
        names = dataset.label_names(files, "train")
        label_of = {f.id: n for f, n in zip(files, names, strict=True)}
        class_names = sorted({n for n in names if n is not None})

        def clip_set(frames: np.ndarray, kept: list) -> ClipSet:
            labels = [class_names.index(label_of[f.id]) if label_of[f.id] is not None else -1 for f in kept]
            return ClipSet(frames=frames, labels=np.array(labels, dtype=np.int64), ids=[f.id for f in kept])

        skipped: list[dict[str, str]] = []
        preloaded = None
        prepared_on = None  # the clips the gradient source was prepared on; Ray workers prepare on them too
        if components.gradient.uses_model:
            # The model stage trains on the corpus: it needs every clip before any gradient.
            frames, kept, skipped = dataset.read_clips(files)
            preloaded = {f.id: i for i, f in enumerate(kept)}, frames
            with ctx.stage("motion + descriptors"):
                prepared_on = analyse(clip_set(frames, kept), components, ctx, cfg.static_threshold)
            prepare_gradient_source(components.gradient, components.model, prepared_on, ctx)
        checkpoint_id = components.gradient.checkpoint_id()

        key = rows_key(identity, components, checkpoint_id)
        sources = _reusable_rows(index_dir, manifest, key, checkpoint_id, ctx)
        known = {clip for source in sources for clip in source.rows}
        left_out = {s["file"] for s in skipped}  # path_text of each file (resolve() fails on a link loop)
        todo = [f for f in files if tuple(f.key()) not in known and path_text(f.path) not in left_out]

        def read_batch(batch: list) -> tuple[np.ndarray, list]:
            if preloaded is not None:
                rows, all_frames = preloaded
                return all_frames[[rows[f.id] for f in batch]], batch
            frames, kept, left_out = dataset.read_clips(batch)
            skipped.extend(left_out)
            return frames, kept

        def analyse_batch(frames: np.ndarray, kept: list) -> AnalysedClips:
            return analyse(clip_set(frames, kept), components, ctx, cfg.static_threshold)

        batches = _Batches(read_batch, analyse_batch, batch_size, keep_flows, key)
        with ctx.stage("index") as stage_info:
            computed = _compute_rows(
                todo, batches, index_dir / SHARDS, sources, components, cfg, ctx, prepared_on
            )
            stage_info["status"] = f"{computed} clips computed, {len(files) - len(todo)} reused"

        skipped_files = {s["file"] for s in skipped}
        present = [f for f in files if path_text(f.path) not in skipped_files]
        records = [
            {"id": f.id, "size": f.size, "mtime_ns": f.mtime_ns, "label": label_of[f.id]} for f in present
        ]
        data_name, gathered, old_ids = _consolidate(
            index_dir, manifest, sources, present, records, computed, keep_flows
        )

        static_ids = [f.id for f, s in zip(present, gathered["static"], strict=True) if s]
        config = as_container(cfg)
        config.pop("cache", None)
        with ctx.stage("scoring step") as stage_info:  # before the manifest names the data folder
            made = store_prepared_scoring(
                index_dir / data_name, components.scorer, config["scorer"], gathered["features"], ctx
            )
            stage_info["status"] = "computed" if made else "reused"
        new_manifest = {
            "format": FORMAT_VERSION,
            "mwga_version": __version__,
            "identity": identity,
            "rows_key": key,
            "config": config,
            "overrides": list(overrides or []),
            "corpus_dir": str(corpus_dir),
            "checkpoint_id": checkpoint_id,
            "data": data_name,
            "count": len(present),
            "shape": list(gathered["features"].shape),
            "class_names": class_names,
            "skipped": skipped,
            "static_clips": static_ids,
            "created": manifest["created"] if manifest else time.strftime("%Y-%m-%dT%H:%M:%S"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_manifest(index_dir, new_manifest)
        for leftover in [*index_dir.glob("data-*"), *index_dir.glob(".*.tmp"), index_dir / SHARDS]:
            if leftover.name != data_name:
                shutil.rmtree(leftover, ignore_errors=True)
    reused = len(present) - computed
    removed = len(old_ids - {f.id for f in present})
    return IndexSummary(
        index_dir, len(present), reused, computed, removed, skipped, static_ids, time.perf_counter() - start
    )


def _reusable_rows(
    index_dir: Path, manifest: dict | None, key: str, checkpoint_id: str | None, ctx: RunContext
) -> list[RowSource]:
    """The consolidated data (when made under ``key``) and every shard made under ``key``."""
    sources: list[RowSource | None] = []
    if manifest is not None and manifest.get("rows_key") == key:
        sources.append(open_rows(index_dir / manifest["data"]))
    elif manifest is not None:
        changed = (
            "the gradient source's checkpoint"
            if manifest.get("checkpoint_id") != checkpoint_id
            else "the components' code (or the index format)"
        )
        ctx.console.print(f"[yellow]warning:[/] {changed} changed: recomputing every clip.")
    shard_root = index_dir / SHARDS
    for shard in sorted(shard_root.glob("shard-*")) if shard_root.exists() else []:
        sources.append(open_rows(shard, rows_key=key))
    return [source for source in sources if source is not None]


@dataclass
class _Batches:
    """How :func:`_compute_rows` reads and analyses a batch of clip files, and what it stores."""

    read: Callable[[list], tuple[np.ndarray, list]]
    analyse: Callable[[np.ndarray, list], AnalysedClips]
    size: int
    keep_flows: bool
    rows_key: str


def _compute_rows(
    todo: list,
    batches: _Batches,
    shard_root: Path,
    sources: list[RowSource],
    components: Any,
    cfg: MwgaConfig,
    ctx: RunContext,
    prepared_on: AnalysedClips | None,
) -> int:
    """Featurize the ``todo`` clip files batch by batch, each batch a new shard (appended to
    ``sources``). Returns the number of clips computed."""
    from mwga_core.pipeline.executors import open_executor
    from mwga_core.pipeline.featurize import featurize

    shards = shard_root.glob("shard-*") if shard_root.exists() else []
    next_shard = 1 + max((int(p.name.split("-")[1]) for p in shards), default=0)
    computed = 0
    gradient, projector = components.gradient, components.projector
    checkpoint_id = gradient.checkpoint_id()
    with (
        ctx.progress("clips", len(todo)) as bar,
        open_executor(cfg, ctx, gradient, projector, prepared_on, checkpoint_id) as executor,
    ):
        for begin in range(0, len(todo), batches.size):
            batch = todo[begin : begin + batches.size]
            frames, kept = batches.read(batch)
            if kept:
                analysed = batches.analyse(frames, kept)
                arrays = {
                    "features": featurize(analysed, executor, ctx),
                    "descriptors": analysed.descriptors.astype(np.float32),
                    "static": analysed.static.astype(bool),
                }
                if batches.keep_flows:
                    arrays["flows"] = analysed.flows.astype(np.float16)
                shard = shard_root / f"shard-{next_shard:06d}"
                records = [{"id": f.id, "size": f.size, "mtime_ns": f.mtime_ns} for f in kept]
                write_rows(shard, records, arrays, rows_key=batches.rows_key)
                sources.append(open_rows(shard, rows_key=batches.rows_key))
                next_shard += 1
                computed += len(kept)
            bar.advance(len(batch))
    return computed


def _consolidate(
    index_dir: Path,
    manifest: dict | None,
    sources: list[RowSource],
    present: list,
    records: list[dict],
    computed: int,
    keep_flows: bool,
) -> tuple[str, dict[str, np.ndarray], set[str]]:
    """Gather the rows of the ``present`` clip files into the data folder the new manifest names.

    Returns the data folder's name, its arrays and the clip ids of the previous data.
    """
    where = {}
    for source in sources:  # later sources win: a shard is newer than the data it extends
        for clip, row in source.rows.items():
            where[clip] = (source, row)
    old_ids = (
        {clip[0] for clip in sources[0].rows}
        if manifest and sources and sources[0].path.name == manifest["data"]
        else set()
    )
    picks = [where[tuple(f.key())] for f in present]
    unchanged = (
        manifest is not None
        and computed == 0
        and all(source.path.name == manifest["data"] for source, _ in picks)
        and [row for _, row in picks] == list(range(len(old_ids)))
    )
    if unchanged:  # nothing new: keep the data, refresh only the labels
        data_name = manifest["data"]
        write_json_atomic(index_dir / data_name / "clips.json", records, indent=None)
        return data_name, dict(sources[0].arrays), old_ids
    data_name = f"data-{int(manifest['data'].split('-')[1]) + 1 if manifest else 1:06d}"
    gathered = gather_rows(picks, keep_flows)
    write_rows(index_dir / data_name, records, gathered)
    return data_name, gathered, old_ids
