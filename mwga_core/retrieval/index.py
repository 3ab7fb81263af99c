"""A persistent, incremental, resumable index of a corpus folder: ``mwga index <corpus> --out <index>``.

Layout of ``<index>/``::

    manifest.json        what the index holds and the full config that made it (written last)
    data-<n>/            the consolidated index the manifest points to
        clips.json       one record per clip, row i = feature row i: id, size, mtime_ns, label
        features.npy     (K, N, P) float32 projected gradients (the scorer's input)
        descriptors.npy  (N, B) float32 motion descriptors
        static.npy       (N,) bool: clips with (almost) no motion
        flows.npy        (N, T-1, H, W, 2) float16 optical flow, only with --keep-flows
    shards/shard-<m>/    clips computed by a run that has not consolidated yet (same files per shard)

A clip is identified by its id (path relative to the corpus folder), file size and modification time
(summed / newest over the frames of an image folder). A run scans the folder, reuses the rows of every
clip whose identity is in the consolidated data or in a shard, computes the others in batches of
``batch_size`` clips, writes each finished batch as a shard (into a temporary folder renamed into place,
so a kill leaves only whole shards), then gathers the rows of the clips present now into a new
``data-<n>/`` and atomically replaces ``manifest.json``; old data and shards are deleted after that.
A killed run therefore loses at most one batch, files removed from the folder drop out, and edited
files are recomputed.

The features depend on the index's *identity* (:func:`index_identity`): the motion, descriptor,
gradient, projection and model configs, the dataset fields that shape the clips (frames, size, colour),
the seed, ``static_threshold``, ``--keep-flows`` and the mwga version. Running again with a different
identity is refused (``--rebuild`` starts over). Gradient sources that train on the corpus (their
``prepare`` does something, e.g. ``gradient=diffusion``) see every clip of the corpus in memory first; when
their ``checkpoint_id`` changes (the corpus changed, so the model did), every row is recomputed.

With ``executor=ray`` each batch's gradients and projections are computed by Ray actors
(:class:`mwga_core.pipeline.ray_executor.RayFeaturizer`, started once per run); reading and analysis stay here. The
executor is not part of the identity: it does not change the rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mwga_core import __version__
from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError
from mwga_core.api.gradients import GradientSource
from mwga_core.config.schema import group_configs
from mwga_core.plugin_host.host import PluginHost, get_host

FORMAT_VERSION = 1
#: dataset fields that say where clips are or how to treat bad ones; they do not change any feature
DATASET_LOCATION_FIELDS = ("train_dir", "query_dir", "query_files", "labels", "on_error")
FEATURE_GROUPS = ("motion", "descriptor", "gradient", "projection", "model")
ARRAYS = ("features", "descriptors", "static")


class IndexMismatchError(MwgaUserError):
    """The index on disk was made with another config than this run's."""


def compose_index_config(overrides: list[str], host: PluginHost | None = None) -> DictConfig:
    """The run config ``mwga <overrides>`` would compose, with ``dataset=video_folder`` first."""
    from hydra import compose, initialize_config_module

    from mwga_core.config.schema import register_configs

    register_configs(host or get_host())
    with initialize_config_module("mwga_conf", version_base="1.3"):
        return compose(config_name="config", overrides=["dataset=video_folder", *overrides])


def index_identity(cfg: DictConfig, keep_flows: bool) -> dict[str, Any]:
    """Everything that changes an index's rows, as plain JSON-able data."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
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


@dataclass
class IndexData:
    """A loaded index (arrays memory-mapped read-only).

    Shape:
        features: (K, N, P) float32; descriptors: (N, B) float32; static: (N,) bool;
        flows: (N, T-1, H, W, 2) float16 or None.
    """

    path: Path
    manifest: dict[str, Any]
    clips: list[dict[str, Any]]
    features: np.ndarray
    descriptors: np.ndarray
    static: np.ndarray
    flows: np.ndarray | None = None

    @property
    def config(self) -> DictConfig:
        """The composed config the index was made with."""
        return OmegaConf.create(self.manifest["config"])

    @property
    def ids(self) -> list[str]:
        return [clip["id"] for clip in self.clips]


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


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    """The manifest of ``index_dir``, or None when there is none yet; unreadable -> DataError."""
    path = Path(index_dir) / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: the index manifest cannot be read ({error}); use --rebuild.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: not an mwga index manifest of format {FORMAT_VERSION}; use --rebuild.")
    return manifest


def load_index(index_dir: str | Path) -> IndexData:
    """Open the index at ``index_dir``; a missing or damaged index raises DataError naming the path."""
    index_dir = Path(index_dir).expanduser()
    manifest = read_manifest(index_dir)
    if manifest is None:
        raise DataError(f"{index_dir}: no mwga index here (no manifest.json); make one with `mwga index`.")
    data = index_dir / manifest["data"]
    try:
        clips = json.loads((data / "clips.json").read_text())
        arrays = {name: np.load(data / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        flows = np.load(data / "flows.npy", mmap_mode="r") if (data / "flows.npy").exists() else None
    except (OSError, ValueError) as error:
        raise DataError(f"{data}: the index data cannot be read ({error}); run `mwga index` again.") from None
    if arrays["features"].shape[1] != len(clips):
        raise DataError(f"{data}: features hold {arrays['features'].shape[1]} rows for {len(clips)} clips.")
    return IndexData(index_dir, manifest, clips, flows=flows, **arrays)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: index {old!r}, this run {new!r}"]


@dataclass
class _Source:
    """Rows that can be reused: the consolidated data or one shard."""

    path: Path
    rows: dict[tuple, int]  # clip identity -> row
    arrays: dict[str, np.ndarray]


def _open_source(path: Path) -> _Source | None:
    try:
        clips = json.loads((path / "clips.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        if (path / "flows.npy").exists():
            arrays["flows"] = np.load(path / "flows.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None  # an unreadable leftover is recomputed, never trusted
    if any(len(array) != len(clips) for name, array in arrays.items() if name != "features"):
        return None
    rows = {(c["id"], c["size"], c["mtime_ns"]): row for row, c in enumerate(clips)}
    return _Source(path, rows, arrays)


def _write_rows(folder: Path, clips: list[dict], arrays: dict[str, np.ndarray]) -> None:
    """Write one shard (or data folder) into a temporary folder, then rename it into place."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "clips.json").write_text(json.dumps(clips))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def index_corpus(
    corpus_dir: str | Path,
    index_dir: str | Path,
    cfg: DictConfig,
    ctx: RunContext,
    host: PluginHost | None = None,
    keep_flows: bool = False,
    batch_size: int = 256,
    rebuild: bool = False,
    overrides: list[str] | None = None,
) -> IndexSummary:
    """Bring the index at ``index_dir`` up to date with the clips in ``corpus_dir`` (see module docstring)."""
    from mwga_core.pipeline.ray_executor import RayFeaturizer, RaySettings
    from mwga_core.pipeline.run import analyse, build_components, check_device, featurize

    start = time.perf_counter()
    host = host or get_host()
    corpus_dir, index_dir = Path(corpus_dir).expanduser().resolve(), Path(index_dir).expanduser()
    if batch_size < 1:
        raise ConfigValueError("--batch-size", batch_size, "an integer >= 1")
    cfg = cfg.copy()
    cfg.dataset.train_dir = str(corpus_dir)
    manifest = None if rebuild else read_manifest(index_dir)
    if manifest is not None and not cfg.dataset.get("labels"):
        # a later run without dataset.labels keeps the labels the index was given
        cfg.dataset.labels = manifest["config"]["dataset"].get("labels", "")
    components = build_components(cfg, host)
    dataset = components.dataset
    if not hasattr(dataset, "read_clips"):
        raise ConfigValueError("dataset", cfg.dataset.name, "video_folder (a dataset that reads clip files)")
    if not components.scorer.uses_features:
        raise ConfigValueError(
            "scorer", cfg.scorer.name, "a scorer that reads features (an index holds features)"
        )
    check_device(cfg.device)
    on_ray = RaySettings.from_config(cfg).executor == "ray"  # a bad executor value fails before any work

    identity = index_identity(cfg, keep_flows)
    if rebuild:
        shutil.rmtree(index_dir, ignore_errors=True)
    if manifest is not None and manifest["identity"] != identity:
        changes = "; ".join(_differences(manifest["identity"], identity)[:6])
        raise IndexMismatchError(
            f"{index_dir} was made with another config ({changes}). Use the same overrides, another --out, "
            "or --rebuild to start over."
        )
    index_dir.mkdir(parents=True, exist_ok=True)
    from mwga_plugins.datasets.video_folder import scan_folder

    files = scan_folder(corpus_dir)
    names = dataset.label_names(files, "train")
    label_of = {f.id: n for f, n in zip(files, names, strict=True)}
    class_names = sorted({n for n in names if n is not None})

    def clip_set(frames: np.ndarray, kept: list) -> ClipSet:
        labels = [class_names.index(label_of[f.id]) if label_of[f.id] is not None else -1 for f in kept]
        return ClipSet(frames=frames, labels=np.array(labels, dtype=np.int64), ids=[f.id for f in kept])

    skipped: list[dict[str, str]] = []
    preloaded = None
    prepared_on = None  # the clips the gradient source was prepared on; Ray workers prepare on them too
    if type(components.gradient).prepare is not GradientSource.prepare:
        # The source trains on the corpus: it needs every clip before any gradient.
        frames, kept, skipped = dataset.read_clips(files)
        preloaded = {f.id: i for i, f in enumerate(kept)}, frames
        with ctx.stage("prepare gradient source"):
            prepared_on = analyse(clip_set(frames, kept), components, ctx, cfg.static_threshold)
            components.gradient.prepare(prepared_on, ctx)
    checkpoint_id = components.gradient.checkpoint_id()

    shard_root = index_dir / "shards"
    sources: list[_Source] = []
    if manifest is not None and manifest.get("checkpoint_id") == checkpoint_id:
        sources.append(_open_source(index_dir / manifest["data"]))
    elif manifest is not None:
        ctx.console.print(
            "[yellow]warning:[/] the gradient source's checkpoint changed: recomputing every clip."
        )
    shard_meta = {"identity": identity, "checkpoint_id": checkpoint_id}
    for shard in sorted(shard_root.glob("shard-*")) if shard_root.exists() else []:
        meta_path = shard / "shard.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) == shard_meta:
            sources.append(_open_source(shard))
    sources = [s for s in sources if s is not None]
    known = {key for source in sources for key in source.rows}
    skipped_ids = {Path(s["file"]).resolve() for s in skipped}
    todo = [f for f in files if tuple(f.key()) not in known and f.path.resolve() not in skipped_ids]

    next_shard = 1 + max((int(p.name.split("-")[1]) for p in shard_root.glob("shard-*")), default=0)
    computed = 0
    ray_featurizer = RayFeaturizer(cfg, ctx, prepared_on, checkpoint_id) if on_ray and todo else None
    with (
        ctx.stage("index") as stage_info,
        ctx.progress("clips", len(todo)) as bar,
        ray_featurizer or contextlib.nullcontext(),
    ):
        for begin in range(0, len(todo), batch_size):
            batch = todo[begin : begin + batch_size]
            if preloaded is not None:
                rows, all_frames = preloaded
                kept, frames = batch, all_frames[[rows[f.id] for f in batch]]
            else:
                frames, kept, left_out = dataset.read_clips(batch)
                skipped += left_out
            if kept:
                analysed = analyse(clip_set(frames, kept), components, ctx, cfg.static_threshold)
                if ray_featurizer is not None:
                    features = ray_featurizer.featurize(analysed)
                else:
                    features = featurize(analysed, components, ctx)
                arrays = {
                    "features": features,
                    "descriptors": analysed.descriptors.astype(np.float32),
                    "static": analysed.static.astype(bool),
                }
                if keep_flows:
                    arrays["flows"] = analysed.flows.astype(np.float16)
                shard = shard_root / f"shard-{next_shard:06d}"
                records = [{"id": f.id, "size": f.size, "mtime_ns": f.mtime_ns} for f in kept]
                _write_rows(shard, records, arrays)
                _write_json_atomic(shard / "shard.json", shard_meta)
                sources.append(_open_source(shard))
                next_shard += 1
                computed += len(kept)
            bar.advance(len(batch))
        stage_info["status"] = f"{computed} clips computed, {len(files) - len(todo)} reused"

    skipped_files = {s["file"] for s in skipped}
    present = [f for f in files if str(f.path) not in skipped_files]
    where = {}
    for source in sources:  # later sources win: a shard is newer than the data it extends
        for key, row in source.rows.items():
            where[key] = (source, row)
    old_ids = (
        {key[0] for key in sources[0].rows}
        if manifest and sources and sources[0].path.name == manifest["data"]
        else set()
    )
    picks = [where[tuple(f.key())] for f in present]
    records = [{"id": f.id, "size": f.size, "mtime_ns": f.mtime_ns, "label": label_of[f.id]} for f in present]
    unchanged = (
        manifest is not None
        and computed == 0
        and all(source.path.name == manifest["data"] for source, _ in picks)
        and [row for _, row in picks] == list(range(len(old_ids)))
    )
    if unchanged:  # nothing new: keep the data, refresh only the labels
        data_name = manifest["data"]
        gathered = dict(sources[0].arrays)
        _write_json_atomic(index_dir / data_name / "clips.json", records)
    else:
        data_name = f"data-{int(manifest['data'].split('-')[1]) + 1 if manifest else 1:06d}"
        gathered = _gather(picks, keep_flows)
        _write_rows(index_dir / data_name, records, gathered)

    static_ids = [f.id for f, s in zip(present, gathered["static"], strict=True) if s]
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("cache", None)
    new_manifest = {
        "format": FORMAT_VERSION,
        "mwga_version": __version__,
        "identity": identity,
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
    _write_json_atomic(index_dir / "manifest.json", new_manifest)
    for leftover in [*index_dir.glob("data-*"), *index_dir.glob(".tmp-*"), shard_root]:
        if leftover.name != data_name:
            shutil.rmtree(leftover, ignore_errors=True)
    reused = len(present) - computed
    removed = len(old_ids - {f.id for f in present})
    return IndexSummary(
        index_dir, len(present), reused, computed, removed, skipped, static_ids, time.perf_counter() - start
    )


def _gather(picks: list[tuple[_Source, int]], keep_flows: bool) -> dict[str, np.ndarray]:
    """The rows ``picks`` names, in that order, as new arrays (grouped by source, one fancy index each)."""
    if not picks:
        raise DataError("the corpus folder holds no usable clip: nothing to index.")
    names = [*ARRAYS, "flows"] if keep_flows else list(ARRAYS)
    first = picks[0][0].arrays
    out = {}
    for name in names:
        template = first[name]
        axis = 1 if name == "features" else 0
        shape = list(template.shape)
        shape[axis] = len(picks)
        out[name] = np.empty(shape, dtype=template.dtype)
    by_source: dict[int, tuple[_Source, list[int], list[int]]] = {}
    for position, (source, row) in enumerate(picks):
        entry = by_source.setdefault(id(source), (source, [], []))
        entry[1].append(position)
        entry[2].append(row)
    for source, positions, rows in by_source.values():
        for name in names:
            if name == "features":
                out[name][:, positions] = source.arrays[name][:, rows]
            else:
                out[name][positions] = source.arrays[name][rows]
    return out


def index_command(args: list[str]) -> int:
    """``mwga index <corpus-dir> --out <index-dir> [--keep-flows] [--batch-size N] [--rebuild] [overrides]``."""
    import argparse

    from rich.console import Console

    from mwga_core.api.progress import progress_wanted
    from mwga_core.config.schema import cache_path

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
    options = parser.parse_intermixed_args(args)
    console = Console(stderr=True)
    cfg = compose_index_config(options.overrides)
    ctx = RunContext(
        seed=cfg.seed,
        device=cfg.device,
        cache_dir=cache_path(cfg.cache),
        output_dir=options.out,
        show_progress=progress_wanted(console),
        console=console,
    )
    summary = index_corpus(
        options.corpus_dir,
        options.out,
        cfg,
        ctx,
        keep_flows=options.keep_flows,
        batch_size=options.batch_size,
        rebuild=options.rebuild,
        overrides=options.overrides,
    )
    for skipped in summary.skipped:
        console.print(f"[yellow]skipped:[/] {skipped['reason']}", highlight=False)
    if summary.static_ids:
        console.print(
            f"[yellow]warning:[/] {len(summary.static_ids)} clip(s) show no motion: "
            + ", ".join(summary.static_ids[:5])
            + (" ..." if len(summary.static_ids) > 5 else ""),
            highlight=False,
        )
    print(
        f"indexed {summary.total} clips into {summary.path}: {summary.computed} computed, {summary.reused} "
        f"reused, {summary.removed} removed, {len(summary.skipped)} skipped ({summary.seconds:.1f} s)"
    )
    return 0
