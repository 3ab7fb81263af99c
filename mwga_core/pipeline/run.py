"""The attribution pipeline: dataset -> flow -> descriptors -> gradients -> projection -> scores -> metrics.

:func:`run_attribution` builds every component from the composed config first (so a bad value fails
before any work), then runs the stages in order. See docs/architecture.md for the picture.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

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
from mwga_core.api.trained_model import TrainedModel
from mwga_core.config.checks import check_fields
from mwga_core.config.schema import MwgaConfig
from mwga_core.diffusion.sampling import check_generates_queries, generated_queries
from mwga_core.evaluation.metrics import evaluate
from mwga_core.pipeline.executors import check_executor, open_executor
from mwga_core.pipeline.featurize import featurize, featurize_cached
from mwga_core.pipeline.model_stage import prepare_gradient_source
from mwga_core.pipeline.stages import (
    RawGradients,
    cached_descriptors,
    cached_flows,
    cached_scores,
    features_key,
    gradient_key,
    load_corpus,
)
from mwga_core.plugin_host.host import PluginHost, get_host
from mwga_core.storage.keys import clips_fingerprint
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


def build_components(cfg: MwgaConfig, host: PluginHost) -> Components:
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
        if cfg.model is None:
            raise ConfigValueError("model", None, "a model adapter, e.g. model=video_denoiser")
        components.model = host.build("model", cfg.model)
        components.gradient.check_model(components.model)
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
    if device == "cpu":  # always usable: a fully cached run need not import torch to know it
        return
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
    source_key = source_key or (clips_fingerprint(clips) if cache.enabled else "uncached")
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


def generate_queries(
    corpus: Corpus,
    model: TrainedModel,
    components: Components,
    ctx: RunContext,
    static_threshold: float,
    cache: StageCache | None = None,
) -> tuple[Corpus, AnalysedClips, str]:
    """``query=generated``: replace the queries by clips sampled from the trained ``model``.

    As many clips per class as the dataset has queries per class (``dataset.queries_per_pattern``),
    labelled with the class they were conditioned on, then analysed like held-out queries (keyed by
    their content). An image-to-video model continues the held-out queries' first frames. Returns the
    corpus with these queries, the analysed queries and their descriptors key.
    """
    known = corpus.queries.labels[corpus.queries.labels >= 0]
    per_class = int(np.bincount(known).max()) if len(known) else 1
    clips = generated_queries(model, corpus.class_names, per_class, ctx, context=corpus.queries)
    generated = dataclasses.replace(corpus, queries=clips)
    generated.validate()
    queries, key = analyse_keyed(clips, components, ctx, static_threshold, cache, label="generated queries")
    if queries.static.any():
        log.warning(f"warning: {int(queries.static.sum())} generated query clip(s) show almost no motion")
    return generated, queries, key


def check_run_options(cfg: MwgaConfig, components: Components) -> str:
    """Validate the run-level fields before any work; returns the query source."""
    check_fields(cfg)  # the ranges MwgaConfig declares (static_threshold, query, executor, ...)
    if components.scorer.uses_features:
        check_device(cfg.device)
    query_source = cfg.query
    check_executor(cfg)  # a bad executor value fails here too
    if query_source == "generated" and not (
        components.scorer.uses_features and components.gradient.uses_model
    ):
        raise ConfigValueError(
            "query",
            query_source,
            f"heldout: gradient {cfg.gradient.name!r} has no model to generate queries from (use gradient=diffusion)",
        )
    if query_source == "generated":
        check_generates_queries(components.model)
    return query_source


def run_attribution(cfg: MwgaConfig, ctx: RunContext, host: PluginHost | None = None) -> AttributionResult:
    """Run the whole pipeline for one composed config."""
    host = host or get_host()
    components = build_components(cfg, host)
    spec = cfg.eval
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
        trained_model = prepare_gradient_source(components.gradient, components.model, train, ctx)
        with ctx.stage("gradients + projection") as stage_info:
            if generate:
                corpus, queries, queries_key = generate_queries(
                    corpus, trained_model, components, ctx, cfg.static_threshold, cache
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
        scores = cached_scores(query_features, train_features, components.scorer, ctx, cache, score_inputs)
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
    cfg: MwgaConfig,
    ctx: RunContext,
    cache: StageCache,
    stage_info: dict,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Featurize each split (``name -> (clips, descriptors key)``) on the configured executor, through
    the resumable features entry (``feature_store``) and the raw gradient cache (``cache.gradients``).

    Returns ``name -> (K, N, P) features`` and ``name -> features key`` (the key chain's link to the
    scores).
    """
    train, train_key = splits["train"]
    gradient_keys = {
        name: gradient_key(cache, components.gradient, components.model, key, train_key, ctx)
        for name, (_, key) in splits.items()
    }
    keys = {name: features_key(cache, components.projector, key) for name, key in gradient_keys.items()}
    resumable = cache.enabled and cfg.feature_store
    keep_raw = cache.enabled and cfg.cache.gradients
    max_bytes = float(cfg.cache.gradients_max_gb) * 2**30
    checkpoint_id = components.gradient.checkpoint_id()
    mark = len(cache.events)
    features, stored = {}, 0
    gradient, projector = components.gradient, components.projector
    with open_executor(cfg, ctx, gradient, projector, train, checkpoint_id) as executor:
        for name, (clips, _) in splits.items():
            raw = RawGradients(cache, gradient_keys[name], name, max_bytes) if keep_raw else None
            if resumable:
                features[name], read = featurize_cached(
                    clips, executor, ctx, cache, keys[name], projector, raw
                )
                stored += read
            else:
                features[name] = featurize(clips, executor, ctx, None, raw)
    status = []
    if stored:
        total = sum(len(clips) for clips, _ in splits.values())
        whole = " (cached)" if stored == total else ""
        status.append(f"{stored} of {total} clips read from the feature store{whole}")
    if len(cache.events) > mark:
        status.append(f"gradients {cache.status_since(mark)}")
    stage_info["status"] = "; ".join(status) or "computed"
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
