"""The ``diffusion`` gradient source: per-clip gradients of a tiny trained denoiser, composed from the
objective, engine and contrast pieces of ``mwga_core.diffusion``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import TrainingConfig
from mwga_core.diffusion.objectives import shared_noise
from mwga_core.diffusion.sampling import generated_queries
from mwga_core.pipeline.model_stage import prepare_gradient_source
from mwga_core.storage.model_store import model_from_module
from mwga_core.testing import GradientSourceContract, small_analysed


def tiny_adapter(label_dropout: float = 0.0, **fields) -> VideoDenoiserAdapter:
    return VideoDenoiserAdapter(
        VideoDenoiserConfig(
            name="video_denoiser",
            **fields,
            channels=8,
            blocks=1,
            diffusion_steps=100,
            sample_steps=3,
            training=TrainingConfig(
                steps=6,
                batch_size=4,
                warmup=1,
                checkpoints=[3],
                bf16=False,
                ema=0.0,
                label_dropout=label_dropout,
            ),
        )
    )


def source(ctx: RunContext, train=None, model=None, **fields) -> DiffusionGradient:
    """A source as the pipeline prepares it: model checked, trained (model stage, cached) and bound."""
    config = DiffusionGradientConfig(name="diffusion", **{"timesteps": [30], "chunk_size": 4, **fields})
    gradient = DiffusionGradient(config)
    adapter = model or tiny_adapter()
    gradient.check_model(adapter)
    prepare_gradient_source(gradient, adapter, train if train is not None else small_analysed("train"), ctx)
    return gradient


def gradients(gradient: DiffusionGradient, clips, ctx: RunContext) -> np.ndarray:
    """(K, N, D) by clip index."""
    out = {}
    for chunk in gradient.iter_gradients(clips, ctx):
        for column, index in enumerate(chunk.indices):
            out[int(index)] = chunk.grads[:, column].numpy()
    return np.stack([out[i] for i in range(len(clips))], axis=1)


class TestDiffusionGradientContract(GradientSourceContract):
    component_class = DiffusionGradient
    config = DiffusionGradientConfig(timesteps=[30], chunk_size=4)

    def make_component(self):
        # an untrained model, bound as the model stage would bind a trained one
        component = super().make_component()
        adapter = tiny_adapter()
        torch.manual_seed(0)
        component.bind_model(
            model_from_module(adapter, adapter.build_fresh((5, 16, 16, 1), 6), (5, 16, 16, 1), 6)
        )
        return component


LOOP_CASES = [
    {},
    {"output": "dtrak", "weighting": "none", "timesteps": [10, 60]},
    {"output": "dtrak", "weighting": "mask", "chunk_size": 3},
    {"weighting": "scalar", "timesteps": [5, 50, 95], "frame_normalize": False},
]


@pytest.mark.parametrize("engine", ["batched", "vmap"])
@pytest.mark.parametrize("fields", LOOP_CASES)
def test_gradients_equal_a_per_clip_loop(ctx: RunContext, fields, engine) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, engine=engine, **fields)
    fast = gradients(gradient, train, ctx)[0]
    c, adapter = gradient.config, gradient.trained.adapter
    module = gradient.trained.module()
    noises = shared_noise(adapter.model_shape(gradient.trained.clip_shape), c.timesteps, ctx)
    weights = gradient.loss_weights(train, gradient.trained)
    scales = gradient.clip_scales(train)
    x0 = adapter.encode(train.clips.frames)
    for i in range(4):
        module.zero_grad()
        total = 0.0
        for t, noise in zip(c.timesteps, noises, strict=True):
            tt = torch.tensor([t])
            prediction = module(
                adapter.add_noise(x0[i : i + 1], tt, noise[None]), tt, torch.tensor([train.clips.labels[i]])
            )
            w = None if weights is None else weights[i : i + 1]
            if c.output == "loss":
                total = total + adapter.per_example_loss(prediction, noise[None], w).sum()
            else:
                total = total + adapter.dtrak_output(prediction if w is None else prediction * w.sqrt()).sum()
        (total / len(c.timesteps) * float(scales[i])).backward()
        naive = torch.cat([p.grad.reshape(-1) for p in module.parameters()]).numpy()
        np.testing.assert_allclose(fast[i], naive, rtol=1e-4, atol=1e-7)


def assert_same_per_clip(batched: np.ndarray, vmapped: np.ndarray) -> None:
    """Each clip's gradient vector agrees to 1e-5 relative (norm of the difference / norm)."""
    assert batched.shape == vmapped.shape
    # (static clips under the motion mask have an all-zero gradient: both engines must give exactly 0)
    error = np.linalg.norm(batched - vmapped, axis=-1) / np.maximum(np.linalg.norm(vmapped, axis=-1), 1e-30)
    assert error.max() < 1e-5, error.max()


def engines_agree(ctx: RunContext, train, **fields) -> np.ndarray:
    batched = gradients(source(ctx, train, engine="batched", **fields), train, ctx)
    assert_same_per_clip(batched, gradients(source(ctx, train, engine="vmap", **fields), train, ctx))
    return batched


def test_engines_agree_on_the_default_method_path(ctx: RunContext) -> None:
    # gradient.params=temporal, several timesteps, the motion mask, two checkpoints, ragged chunks
    train = small_analysed("train")
    fields = {"params": "temporal", "timesteps": [10, 40, 70, 95], "weighting": "mask"}
    g = engines_agree(ctx, train, checkpoints=[3, 6], chunk_size=5, **fields)
    assert g.shape[0] == 2 and np.abs(g).max() > 0


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention
def test_engines_agree_with_temporal_attention_and_a_regex_selection(ctx: RunContext) -> None:
    # attention's Linear layers see (clips * tokens) rows; the regex selects norms and embeddings
    train = small_analysed("train")
    attention = {"temporal_attention_heads": 2, "temporal_spatial_kernel": 3}
    for params in ("all", r"norm|embedding|time_mlp"):
        gradient = DiffusionGradient(
            DiffusionGradientConfig(name="diffusion", timesteps=[30], chunk_size=4, params=params)
        )
        prepare_gradient_source(gradient, tiny_adapter(**attention), train, ctx)
        batched = gradients(gradient, train, ctx)
        gradient.config.engine = "vmap"
        assert_same_per_clip(batched, gradients(gradient, train, ctx))


def test_batched_gradients_are_bit_deterministic(ctx: RunContext) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, params="temporal", timesteps=[10, 60])
    np.testing.assert_array_equal(gradients(gradient, train, ctx), gradients(gradient, train, ctx))


def test_bf16_batched_gradients_stay_close_to_float32(ctx: RunContext) -> None:
    train = small_analysed("train")
    exact = gradients(source(ctx, train, engine="vmap", weighting="none"), train, ctx)[0]
    for engine in ("batched", "vmap"):
        rough = gradients(source(ctx, train, engine=engine, bf16=True, weighting="none"), train, ctx)[0]
        cosine = (rough * exact).sum(1) / np.linalg.norm(rough, axis=1) / np.linalg.norm(exact, axis=1)
        assert np.isfinite(rough).all() and cosine.min() > 0.95, (engine, cosine.min())


def test_a_model_that_mixes_samples_is_caught_by_the_engine_check(ctx: RunContext) -> None:
    from torch import nn

    class TimeMajorMixer(nn.Module):
        """Rows ordered frame-major, (T * B, ...): the batched engine cannot fold them per clip."""

        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(16 * 16, 16 * 16)

        def forward(self, x, t, labels=None):
            b, c, frames, h, w = x.shape
            rows = x.permute(2, 0, 1, 3, 4).reshape(frames * b, c * h * w)
            return self.mix(rows).reshape(frames, b, c, h, w).permute(1, 2, 0, 3, 4)

    train = small_analysed("train")
    gradient = source(ctx, train, weighting="none")
    mixer = TimeMajorMixer()
    gradient.trained.module = lambda step=None, device="cpu": mixer
    with pytest.raises(ConfigValueError, match="vmap"):
        gradients(gradient, train, ctx)
    gradient.config.engine = "vmap"
    assert np.abs(gradients(gradient, train, ctx)).max() > 0


def test_temporal_subset_is_the_temporal_columns_of_the_full_gradient(ctx: RunContext) -> None:
    train = small_analysed("train")
    full = source(ctx, train)
    temporal = source(ctx, train, params="temporal")
    module = full.trained.module()
    columns, offset = [], 0
    for name, p in module.named_parameters():
        if "temporal" in name:
            columns.extend(range(offset, offset + p.numel()))
        offset += p.numel()
    g_full, g_temporal = gradients(full, train, ctx), gradients(temporal, train, ctx)
    assert g_temporal.shape[2] == len(columns) < g_full.shape[2]
    np.testing.assert_allclose(g_temporal, g_full[:, :, columns], rtol=1e-5, atol=1e-8)


def test_regex_selection_and_empty_selection(ctx: RunContext) -> None:
    train = small_analysed("train")
    g = gradients(source(ctx, train, params=r"^patch_out\."), train, ctx)
    assert g.shape[2] == 8 * 16 + 16  # patch_out: Linear(8, 1 * 4 * 4)
    with pytest.raises(ConfigValueError, match="params"):
        gradients(source(ctx, train, params="no_such_layer"), train, ctx)


def test_mask_changes_the_gradient(ctx: RunContext) -> None:
    train = small_analysed("train")
    masked = gradients(source(ctx, train, weighting="mask"), train, ctx)
    plain = gradients(source(ctx, train, weighting="none"), train, ctx)
    assert not np.allclose(masked, plain)


def test_scalar_weighting_scales_by_the_descriptor_norm(ctx: RunContext) -> None:
    train = small_analysed("train")
    scalar = gradients(source(ctx, train, weighting="scalar"), train, ctx)
    plain = gradients(source(ctx, train, weighting="none"), train, ctx)
    norms = np.linalg.norm(train.descriptors, axis=1)
    np.testing.assert_allclose(scalar, plain * norms[None, :, None], rtol=1e-5, atol=1e-9)


def test_frame_normalisation_divides_by_the_frame_count(ctx: RunContext) -> None:
    train = small_analysed("train")
    normalised = gradients(source(ctx, train, weighting="none"), train, ctx)
    raw = gradients(source(ctx, train, weighting="none", frame_normalize=False), train, ctx)
    np.testing.assert_allclose(normalised * train.clips.num_frames, raw, rtol=1e-5, atol=1e-9)


def test_several_checkpoints_give_k_gradient_sets(ctx: RunContext) -> None:
    train = small_analysed("train")
    g = gradients(source(ctx, train, checkpoints=[3, 6]), train, ctx)
    assert g.shape[0] == 2 and not np.allclose(g[0], g[1])
    with pytest.raises(ConfigValueError, match="checkpoints"):
        source(ctx, train, checkpoints=[4])


def test_noise_is_shared_by_every_clip_train_and_query(ctx: RunContext) -> None:
    # The same clip gets the same gradient whether it is computed alone, in another chunk or split.
    train = small_analysed("train")
    gradient = source(ctx, train)
    subset_grads = gradients(gradient, train.subset(np.array([5, 2])), ctx)
    full = gradients(gradient, train, ctx)
    np.testing.assert_allclose(subset_grads[0], full[0, [5, 2]], rtol=1e-5, atol=1e-8)
    model_shape = gradient.trained.adapter.model_shape(gradient.trained.clip_shape)
    noises = shared_noise(model_shape, gradient.config.timesteps, ctx)
    assert len(noises) == 1 and noises[0].shape == (1, 5, 16, 16)


def test_bad_values_name_the_field() -> None:
    bad = [("output", "logits"), ("weighting", "both"), ("timesteps", []), ("params", "["), ("engine", "jax")]
    for field, value in bad:
        with pytest.raises(ConfigValueError, match=field):
            DiffusionGradient(DiffusionGradientConfig(name="diffusion", **{field: value}))


def test_gradients_need_a_bound_model(ctx: RunContext) -> None:
    gradient = DiffusionGradient(DiffusionGradientConfig(name="diffusion"))
    assert gradient.uses_model
    with pytest.raises(RuntimeError, match="bind_model"):
        next(gradient.iter_gradients(small_analysed("train"), ctx))


def test_a_model_run_without_a_model_adapter_is_a_config_error(compose_config) -> None:
    import dataclasses

    from mwga_core.pipeline.run import build_components
    from mwga_core.plugin_host.host import get_host

    cfg = dataclasses.replace(compose_config("gradient=diffusion"), model=None)
    with pytest.raises(ConfigValueError, match="model"):
        build_components(cfg, get_host())


def test_timesteps_beyond_the_schedule_are_refused_before_training() -> None:
    gradient = DiffusionGradient(DiffusionGradientConfig(name="diffusion", timesteps=[100]))
    with pytest.raises(ConfigValueError, match=r"timesteps.*\[0, 100\)"):
        gradient.check_model(tiny_adapter())  # diffusion_steps=100


def test_generated_queries_are_labelled_per_class(ctx: RunContext) -> None:
    gradient = source(ctx)
    clips = generated_queries(gradient.trained, ["a", "b", "c", "d", "e", "f"], 2, ctx)
    assert clips.frames.shape == (12, 5, 16, 16, 1)
    assert clips.ids[:3] == ["generated-a-0", "generated-a-1", "generated-b-0"]
    np.testing.assert_array_equal(clips.labels, np.repeat(np.arange(6), 2))


def test_null_conditioning_ignores_the_labels(ctx: RunContext) -> None:
    # conditioning=unconditional differentiates every clip with the null label: relabelling the clips changes
    # nothing, while conditioning=label sees the relabelling.
    train = small_analysed("train")
    guided = tiny_adapter(label_dropout=0.5, guidance=3.0)
    relabelled = small_analysed("train")
    relabelled.clips.labels = (relabelled.clips.labels + 1) % 6
    null = source(ctx, train, model=guided, conditioning="unconditional")
    np.testing.assert_array_equal(gradients(null, train, ctx), gradients(null, relabelled, ctx))
    labelled = source(ctx, train, model=guided, conditioning="label")
    assert not np.allclose(gradients(labelled, train, ctx), gradients(labelled, relabelled, ctx))
    # the null-label gradient is the model's gradient at label 6 (the extra embedding row)
    as_class_six = small_analysed("train")
    as_class_six.clips.labels = np.full(len(as_class_six), 6)
    np.testing.assert_array_equal(gradients(null, train, ctx), gradients(labelled, as_class_six, ctx))


def test_null_conditioning_needs_a_null_label(ctx: RunContext) -> None:
    with pytest.raises(ConfigValueError, match="conditioning.*label_dropout"):
        source(ctx, conditioning="unconditional")
    with pytest.raises(ConfigValueError, match="conditioning"):
        DiffusionGradient(DiffusionGradientConfig(name="diffusion", conditioning="none"))


TINY_RUN = [
    "gradient=diffusion",
    "model.conditional=true",
    "dataset.num_clips=24",
    "dataset.num_frames=5",
    "dataset.size=16",
    "model.channels=8",
    "model.blocks=1",
    "model.diffusion_steps=100",
    "model.sample_steps=2",
    "model.training.steps=4",
    "model.training.checkpoints=[]",
    "gradient.timesteps=[30]",
    "feature_store=false",
]


def test_pipeline_with_generated_queries(compose_config, ctx: RunContext) -> None:
    from mwga_core.pipeline.run import run_attribution

    result = run_attribution(compose_config(*TINY_RUN, "query=generated"), ctx)
    assert result.corpus.queries.ids[0] == "generated-horizontal_pan-0"
    assert result.scores.shape == (6, 24)
    assert np.isfinite(result.scores).all()


def test_generated_queries_need_a_model(compose_config, ctx: RunContext) -> None:
    from mwga_core.pipeline.run import run_attribution

    with pytest.raises(ConfigValueError, match="query"):
        run_attribution(compose_config("query=generated", "gradient=simulated", "dataset.num_clips=24"), ctx)


def test_ours_generative_preset_attributes_generated_queries(compose_config, ctx: RunContext) -> None:
    from mwga_core.pipeline.run import run_attribution

    tiny = [field for field in TINY_RUN if not field.startswith(("gradient=", "model.conditional"))]
    cfg = compose_config("method=ours_generative", *tiny, "query=generated", "projection.dim=64")
    assert cfg.gradient.conditioning == "unconditional" and cfg.model.training.label_dropout == 0.2
    result = run_attribution(cfg, ctx)
    assert result.corpus.queries.ids[0] == "generated-horizontal_pan-0"
    assert result.scores.shape == (6, 24) and np.isfinite(result.scores).all()
