"""The attribution pipeline: dataset -> flow -> descriptors -> gradients -> projection -> scores -> metrics.

:func:`run_attribution` builds every component from the composed config first (so a bad value fails
before any work), then runs the stages in order. See docs/architecture.md for the picture.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mwga_core.api.clips import AnalysedClips, ClipSet, Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.datasets import Dataset
from mwga_core.api.descriptors import Descriptor
from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.api.gradients import GradientSource
from mwga_core.api.models import ModelAdapter
from mwga_core.api.motion import MotionEstimator
from mwga_core.api.projectors import Projector
from mwga_core.api.results import AttributionResult
from mwga_core.api.scorers import Scorer
from mwga_core.evaluation.metrics import MetricSpec, evaluate
from mwga_core.pipeline.ray_executor import RaySettings, featurize_on_ray
from mwga_core.pipeline.stages import (
    RawGradients,
    cached_descriptors,
    cached_flows,
    cached_scores,
    clips_key,
    features_key,
    gradient_chunks,
    gradient_key,
    load_corpus,
)
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.storage.feature_store import FeatureStore, feature_key_parts
from mwga_core.storage.stage_cache import StageCache, stage_cache_from_config

log = logging.getLogger("mwga")


@dataclass
class Components:
    """One instance of each component kind, as the config selects them."""

    dataset: Dataset
    motion: MotionEstimator
    descriptor: Descriptor
    gradient: GradientSource
    projector: Projector
    scorer: Scorer
    #: the model adapter, built only when the gradient source differentiates a model
    model: ModelAdapter | None = None


def build_components(cfg: DictConfig, host: PluginHost) -> Components:
    """Instantiate the component of every group; a bad name or value raises a user error."""
    components = Components(
        dataset=host.build("dataset", cfg.dataset),
        motion=host.build("motion", cfg.motion),
        descriptor=host.build("descriptor", cfg.descriptor),
        gradient=host.build("gradient", cfg.gradient),
        projector=host.build("projection", cfg.projection),
        scorer=host.build("scorer", cfg.scorer),
    )
    if components.gradient.uses_model:
        if "model" not in cfg or OmegaConf.is_missing(cfg, "model"):
            raise ConfigValueError("model", None, "a model adapter, e.g. model=video_denoiser")
        components.model = host.build("model", cfg.model)
        components.gradient.bind_model(components.model)
    if (
        components.scorer.uses_features
        and components.descriptor.needs_flow
        and not components.motion.produces_flow
    ):
        raise ConfigValueError(
            "motion",
            cfg.motion.name,
            f"a flow estimator: descriptor {cfg.descriptor.name!r} needs optical flow",
        )
    return components


def check_device(device: str) -> None:
    """Fail early and clearly on a device torch cannot use."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigValueError("device", device, "a torch device such as cpu, cuda or cuda:0") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("device", device, "cpu: no CUDA device is visible on this machine")


def analyse(
    clips: ClipSet, components: Components, ctx: RunContext, static_threshold: float
) -> AnalysedClips:
    """Run the motion and descriptor stages on one split (no cache)."""
    return analyse_keyed(clips, components, ctx, static_threshold)[0]


def analyse_keyed(
    clips: ClipSet,
    components: Components,
    ctx: RunContext,
    static_threshold: float,
    cache: StageCache | None = None,
    source_key: str | None = None,
    label: str = "",
) -> tuple[AnalysedClips, str]:
    """Run (or read from ``cache``) the motion and descriptor stages on one split.

    ``source_key`` is the key of the stage the clips came from (``<dataset key>/<split>``); without it
    the clips are keyed by their content. Returns the analysed clips and their descriptors key.
    """
    cache = cache or StageCache(ctx.cache_dir, enabled=False, seed=ctx.seed)
    source_key = source_key or (clips_key(clips) if cache.enabled else "uncached")
    flows, flows_key = cached_flows(clips, components.motion, ctx, cache, source_key, label)
    if flows is not None:
        mean_motion = np.hypot(flows[..., 0], flows[..., 1]).reshape(len(clips), -1).mean(axis=1)
        static = mean_motion < static_threshold
    else:
        static = np.zeros(len(clips), dtype=bool)
    descriptors, descriptors_key = cached_descriptors(
        clips, flows, components.descriptor, ctx, cache, flows_key, label
    )
    if descriptors.shape[0] != len(clips) or not np.isfinite(descriptors).all():
        raise RuntimeError(
            f"descriptor {components.descriptor!r} returned shape {descriptors.shape} or non-finite values; "
            f"expected ({len(clips)}, B) finite"
        )
    return AnalysedClips(clips=clips, flows=flows, descriptors=descriptors, static=static), descriptors_key


def featurize(
    clips: AnalysedClips,
    components: Components,
    ctx: RunContext,
    store: FeatureStore | None = None,
    raw: RawGradients | None = None,
) -> np.ndarray:
    """Gradients of every clip, projected. Returns (K, N, P) float32.

    With a ``store``, clips it already holds are skipped (the gradient source sees only the subset still
    missing) and every finished chunk is written to it, so an interrupted run resumes from there.
    With ``raw``, unprojected gradients come from (or go to) the stage cache, so that another
    projection of the same gradients skips the gradient source.
    """
    todo = np.arange(len(clips), dtype=np.int64) if store is None else store.missing()
    pending = clips if len(todo) == len(clips) else clips.subset(todo)
    parts: dict[int, np.ndarray] = {}
    with ctx.progress("gradients", len(todo)) as bar:
        for chunk in gradient_chunks(pending, todo, len(clips), components, ctx, raw) if len(todo) else ():
            projected = np.stack(
                [
                    components.projector.project(chunk.grads[k], ctx).cpu().numpy()
                    for k in range(chunk.grads.shape[0])
                ]
            )
            indices = todo[np.asarray(chunk.indices, dtype=np.int64)]
            for column, index in enumerate(indices):
                if int(index) in parts:
                    raise RuntimeError(f"gradient source {components.gradient!r} yielded clip {index} twice")
                parts[int(index)] = projected[:, column]
            if store is not None:
                store.write(indices, projected)
            bar.advance(len(chunk.indices))
    missing = sorted(set(todo.tolist()) - set(parts))
    if missing:
        raise RuntimeError(
            f"gradient source {components.gradient!r} yielded no gradient for clips {missing[:5]}"
        )
    if store is not None:
        return store.read()
    return np.stack([parts[i] for i in range(len(clips))], axis=1).astype(np.float32)


QUERY_SOURCES = ("heldout", "generated")


def generate_queries(
    corpus: Corpus,
    components: Components,
    ctx: RunContext,
    static_threshold: float,
    cache: StageCache | None = None,
) -> tuple[Corpus, AnalysedClips, str]:
    """``query=generated``: replace the queries by clips sampled from the prepared model.

    As many clips per class as the dataset has queries per class (``dataset.queries_per_pattern``),
    labelled with the class they were conditioned on, then analysed like held-out queries (keyed by
    their content). An image-to-video model continues the held-out queries' first frames. Returns the
    corpus with these queries, the analysed queries and their descriptors key.
    """
    known = corpus.queries.labels[corpus.queries.labels >= 0]
    per_class = int(np.bincount(known).max()) if len(known) else 1
    clips = components.gradient.generate_queries(corpus.class_names, per_class, ctx, context=corpus.queries)
    generated = dataclasses.replace(corpus, queries=clips)
    generated.validate()
    queries, key = analyse_keyed(clips, components, ctx, static_threshold, cache, label="generated queries")
    if queries.static.any():
        log.warning(f"warning: {int(queries.static.sum())} generated query clip(s) show almost no motion")
    return generated, queries, key


def check_run_options(cfg: DictConfig, components: Components) -> str:
    """Validate the run-level fields before any work; returns the query source."""
    if cfg.static_threshold < 0:
        raise ConfigValueError("static_threshold", cfg.static_threshold, "a number >= 0")
    if components.scorer.uses_features:
        check_device(cfg.device)
    query_source = cfg.get("query", "heldout")
    if query_source not in QUERY_SOURCES:
        raise ConfigValueError("query", query_source, f"one of {list(QUERY_SOURCES)}")
    RaySettings.from_config(cfg)  # a bad executor value fails here too
    if query_source == "generated" and not (
        components.scorer.uses_features and components.gradient.uses_model
    ):
        raise ConfigValueError(
            "query",
            query_source,
            f"heldout: gradient {cfg.gradient.name!r} has no model to generate queries from (use gradient=diffusion)",
        )
    return query_source


def run_attribution(cfg: DictConfig, ctx: RunContext, host: PluginHost | None = None) -> AttributionResult:
    """Run the whole pipeline for one composed config."""
    host = host or get_host()
    components = build_components(cfg, host)
    spec = OmegaConf.to_object(cfg.eval) if not isinstance(cfg.eval, MetricSpec) else cfg.eval
    query_source = check_run_options(cfg, components)

    cache = stage_cache_from_config(cfg, ctx)
    with ctx.stage("dataset") as stage_info, cache.tracking(stage_info):
        corpus, dataset_key = load_corpus(components.dataset, ctx, cache)
        corpus.validate()
    spec.validate(len(corpus.train))

    static_ids: list[str] = []
    if components.scorer.uses_features:
        generate = query_source == "generated"
        with ctx.stage("motion + descriptors") as stage_info, cache.tracking(stage_info):
            analysed = {
                split: analyse_keyed(
                    clips, components, ctx, cfg.static_threshold, cache, f"{dataset_key}/{split}", split
                )
                for split, clips in (("train", corpus.train), ("queries", corpus.queries))
                if not (generate and split == "queries")
            }
        train, train_key = analysed["train"]
        queries, queries_key = analysed.get("queries", (None, ""))
        if queries is not None:
            _refuse_static_queries(queries, cfg.static_threshold)
        static_ids = _warn_static_training_clips(train, cfg.static_threshold)
        with ctx.stage("gradients + projection") as stage_info:
            components.gradient.prepare(train, ctx)
            if generate:
                corpus, queries, queries_key = generate_queries(
                    corpus, components, ctx, cfg.static_threshold, cache
                )
            splits = {"train": (train, train_key), "queries": (queries, queries_key)}
            features, feature_keys = featurize_splits(splits, components, cfg, ctx, cache, stage_info)
        train_features, query_features = features["train"], features["queries"]
        score_inputs = [feature_keys["train"], feature_keys["queries"]]
    else:
        train_features = np.zeros((1, len(corpus.train), 0), dtype=np.float32)
        query_features = np.zeros((1, len(corpus.queries), 0), dtype=np.float32)
        score_inputs = [dataset_key]

    with ctx.stage("scoring") as stage_info, cache.tracking(stage_info):
        scores = cached_scores(query_features, train_features, components, ctx, cache, score_inputs)
    expected = (len(corpus.queries), len(corpus.train))
    if scores.shape != expected or not np.isfinite(scores).all():
        raise RuntimeError(
            f"scorer {components.scorer!r} returned shape {scores.shape} or non-finite scores; expected {expected}"
        )
    rankings, evaluation = evaluate(
        scores, corpus.queries.labels, corpus.train.labels, corpus.class_names, spec
    )
    return AttributionResult(corpus, scores, rankings, evaluation, train_features, query_features, static_ids)


def featurize_splits(
    splits: dict[str, tuple[AnalysedClips, str]],
    components: Components,
    cfg: DictConfig,
    ctx: RunContext,
    cache: StageCache,
    stage_info: dict,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Featurize each split (``name -> (clips, descriptors key)``) through the feature store, the raw
    gradient cache and the configured executor. Returns ``name -> (K, N, P) features`` and
    ``name -> features key`` (the key chain's link to the scores)."""
    checkpoint_id = components.gradient.checkpoint_id()
    train_key = splits["train"][1]
    gradient_keys = {
        name: gradient_key(cache, components, key, train_key, ctx) for name, (_, key) in splits.items()
    }
    stores: dict[str, FeatureStore | None] = dict.fromkeys(splits)
    status = []
    if cfg.get("feature_store", False):
        for name, (clips, _) in splits.items():
            parts = feature_key_parts(cfg, name, clips, checkpoint_id)
            stores[name] = FeatureStore.open(ctx.cache_dir, parts, ctx.console)
        stored = sum(int(store.done.sum()) for store in stores.values())
        if stored:
            total = sum(len(clips) for clips, _ in splits.values())
            whole = " (cached)" if stored == total else ""
            status.append(f"{stored} of {total} clips read from the feature store{whole}")
    cache_cfg = cfg.get("cache") or {}
    keep_raw = cache.enabled and bool(cache_cfg.get("gradients", True))
    max_bytes = float(cache_cfg.get("gradients_max_gb", 8.0)) * 2**30
    on_ray = RaySettings.from_config(cfg).executor == "ray"
    mark = len(cache.events)
    features = {}
    for name, (clips, _) in splits.items():
        if on_ray:
            features[name] = featurize_on_ray(
                clips, splits["train"][0], cfg, ctx, checkpoint_id, stores[name]
            )
        else:
            raw = RawGradients(cache, gradient_keys[name], name, max_bytes) if keep_raw else None
            features[name] = featurize(clips, components, ctx, stores[name], raw)
    if len(cache.events) > mark:
        status.append(f"gradients {cache.status_since(mark)}")
    stage_info["status"] = "; ".join(status) or "computed"
    keys = {name: features_key(cache, components, key) for name, key in gradient_keys.items()}
    return features, keys


def _warn_static_training_clips(train: AnalysedClips, threshold: float) -> list[str]:
    """Static training clips stay in the corpus (a corpus may well hold some); warn and list them."""
    static_ids = [clip_id for clip_id, s in zip(train.clips.ids, train.static, strict=True) if s]
    if static_ids:
        log.warning(
            f"warning: {len(static_ids)} training clip(s) show no motion "
            f"(mean flow < static_threshold={threshold} px): {', '.join(static_ids[:5])}"
            + (" ..." if len(static_ids) > 5 else "")
        )
    return static_ids


def _refuse_static_queries(queries: AnalysedClips, threshold: float) -> None:
    if queries.static.any():
        names = [clip_id for clip_id, s in zip(queries.clips.ids, queries.static, strict=True) if s]
        raise DataError(
            f"query clip(s) {', '.join(names)} show no motion (mean flow below static_threshold={threshold} px): "
            "there is no motion to attribute. Use a moving query or lower static_threshold."
        )
