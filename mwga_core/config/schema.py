"""The run config schema and its registration in Hydra's ConfigStore.

The primary config (``conf/config.yaml``) starts from ``mwga_schema`` and picks one option per config
group. Every registered component contributes its own option to its group, with its dataclass as the
schema, so third-party components appear as ``descriptor=<name>`` without any YAML, and a misspelled
field fails at composition time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from mwga_core.config.checks import at_least, one_of, satisfies
from mwga_core.evaluation.metrics import MetricSpec
from mwga_core.plugin_host.host import PluginHost
from mwga_core.plugin_host.kinds import KINDS

#: the config groups that each hold one component's config (its registered dataclass)
COMPONENT_GROUPS: tuple[str, ...] = tuple(kind.group for kind in KINDS)
#: where the queries come from (``query``)
QUERY_SOURCES = ("heldout", "generated")
#: where featurization runs (``executor``)
EXECUTORS = ("local", "ray")


@dataclass
class CacheConfig:
    """Where reusable artefacts live (trained models, features, stage outputs) and what is kept."""

    dir: str = "${oc.env:MWGA_CACHE_DIR,'~/.cache/mwga'}"
    #: keep every stage's output (dataset, flows, descriptors, gradients, features, scores) in <dir>/stages/ and
    #: reuse it when the stage's config, inputs and code are unchanged (mwga_core/storage/stage_cache.py)
    enabled: bool = True
    #: also keep the unprojected gradients (K x N x D float32 per split), so a projection sweep reuses them
    gradients: bool = True
    #: a split whose unprojected gradients would take more GiB than this is not stored
    gradients_max_gb: float = 8.0


#: the methods ``mwga counterfactual`` scores by default (method presets, conf/method/)
COUNTERFACTUAL_METHODS = (
    "ours",
    "ours_influence",
    "motive",
    "trak",
    "dtrak",
    "ours_simulated",
    "descriptor_knn",
    "flow_magnitude",
    "random",
)


@dataclass
class CounterfactualConfig:
    """``mwga counterfactual``: LDS over random training subsets and retraining without the top-k."""

    #: random training subsets, one model trained on each (LDS); 0 = no LDS (retraining protocol only)
    subsets: int = field(default=32, metadata=at_least(0, note="0 = no LDS, else at least 2"))
    #: the fraction of the training clips in each subset
    fraction: float = field(default=0.5, metadata=satisfies(lambda v: 0 < v < 1, "a number in (0, 1)"))
    #: retrain without each query's top-k clips for each of these k (empty: no retraining protocol)
    k: list[int] = field(default_factory=lambda: [10, 20])
    #: queries of the retraining protocol, spread evenly over the query list; 0 = every query
    retrain_queries: int = field(default=6, metadata=at_least(0))
    #: diffusion timesteps the model outputs average over, one fixed noise draw each
    timesteps: list[int] = field(default_factory=lambda: [50, 100, 200, 400])
    #: bootstrap resamples of the queries for the LDS interval
    bootstrap: int = field(default=1000, metadata=at_least(0))
    #: the bootstrap interval's coverage
    level: float = field(default=0.9, metadata=satisfies(lambda v: 0 < v < 1, "a number in (0, 1)"))
    #: the method presets whose attribution scores are evaluated
    methods: list[str] = field(default_factory=lambda: list(COUNTERFACTUAL_METHODS))
    #: the model option (config group model) retrained and attributed, for every method
    model: str = "video_denoiser_unconditional"
    #: worker processes that train the subset models in parallel (1 = one after another in this process)
    workers: int = field(default=1, metadata=at_least(1))
    #: retrain without the top-k, conditional models only: clips sampled per class for the model check of
    #: each retrained model (as `mwga model-check --per-class`)
    check_per_class: int = field(default=16, metadata=at_least(1))


@dataclass
class MwgaConfig:
    """Top-level run config. Component groups are filled by the defaults list."""

    dataset: Any = MISSING
    motion: Any = MISSING
    descriptor: Any = MISSING
    gradient: Any = MISSING
    projection: Any = MISSING
    scorer: Any = MISSING
    #: the diffusion model that real gradient sources train and differentiate (model adapters)
    model: Any = MISSING
    #: the method preset's label, shown in tables and results.json
    method_name: str = "custom"
    #: the experiment preset's name (conf/experiment/); names the multirun folder, empty for plain runs
    experiment_name: str = ""
    seed: int = 0
    #: torch device for gradients and projection: cpu, cuda, cuda:1, ...
    device: str = "cpu"
    #: a clip whose mean flow magnitude (px per frame pair) is below this is treated as static
    static_threshold: float = field(default=0.01, metadata=at_least(0))
    eval: MetricSpec = field(default_factory=MetricSpec)
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: ``mwga counterfactual``'s protocols (ignored by ``mwga``)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    #: write every query's full ranking to rankings.csv
    save_rankings: bool = True
    #: keep projected features in the stage cache (<cache.dir>/stages/features/, when cache.enabled) and
    #: resume an interrupted featurization there
    feature_store: bool = True
    #: query clips: heldout (the dataset's real query clips) or generated (sampled from the trained
    #: model, dataset.queries_per_pattern per class; needs a gradient source with a model)
    query: str = field(default="heldout", metadata=one_of(*QUERY_SOURCES))
    #: where featurization (gradients + projection) runs: local (this process) or ray (Ray actors over
    #: clip chunks, same features; docs/distributed.md)
    executor: str = field(default="local", metadata=one_of(*EXECUTORS))
    #: executor=ray: the cluster to join (auto, host:6379, ray://host:10001); empty starts a local one
    ray_address: str = ""
    #: executor=ray: Ray actors featurizing at once; 0 = one per CPU of the cluster
    ray_num_workers: int = field(default=0, metadata=at_least(0, note="0 = one per cluster CPU"))
    #: executor=ray: most clips per chunk sent to a worker (each chunk is written to the feature store)
    ray_chunk_clips: int = field(default=256, metadata=at_least(1))


def as_container(config: Any) -> Any:
    """A typed config (or one of its parts) as plain, JSON-able data, keys in field order.

    This is what results.json and an index manifest store: the same dict Hydra's composed config gives.
    """
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def group_configs(cfg: MwgaConfig, groups: tuple[str, ...]) -> dict[str, Any]:
    """Plain (JSON-able) configs of the component ``groups`` the run config sets."""
    return {group: as_container(getattr(cfg, group)) for group in groups if getattr(cfg, group) is not None}


def cache_path(config: CacheConfig) -> Path:
    """The cache folder ``cache.dir`` names, ``~`` expanded."""
    return Path(str(config.dir)).expanduser()


def default_cache_dir() -> Path:
    """The cache folder of a run without ``cache.dir`` override (``$MWGA_CACHE_DIR`` or ~/.cache/mwga)."""
    return cache_path(OmegaConf.to_object(OmegaConf.structured(CacheConfig)))


def register_configs(host: PluginHost) -> None:
    """Store the run schema and one option per registered component in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="mwga_schema", node=MwgaConfig)
    for group, registry in host.registries.items():
        for spec in registry.specs():
            store.store(group=group, name=spec.name, node=spec.default_config(), provider=spec.plugin)
