"""The ``diffusion`` source's motion options: counterfactual contrasts and regional losses."""

from __future__ import annotations

import numpy as np
import pytest
from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig
from test_diffusion_gradient import gradients, source, tiny_adapter

from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import small_analysed


def reversed_in_time(clips: AnalysedClips) -> AnalysedClips:
    """The same clips played backwards; their flow magnitudes are the originals' in reverse order."""
    frames = clips.clips.frames[:, ::-1].copy()
    flows = None if clips.flows is None else -clips.flows[:, ::-1].copy()
    reversed_set = type(clips.clips)(frames=frames, labels=clips.clips.labels, ids=list(clips.clips.ids))
    return AnalysedClips(reversed_set, flows, clips.descriptors, clips.static)


@pytest.mark.parametrize("weighting", ["none", "mask"])
def test_reverse_contrast_is_odd_under_time_reversal(ctx: RunContext, weighting: str) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, contrast="reverse", weighting=weighting)
    forward = gradients(gradient, train, ctx)[0]
    backward = gradients(gradient, reversed_in_time(train), ctx)[0]
    assert np.abs(forward).max() > 0
    np.testing.assert_allclose(backward, -forward, atol=1e-6 * np.abs(forward).max())


def test_reverse_contrast_is_half_the_difference_of_two_gradients(ctx: RunContext) -> None:
    train = small_analysed("train")
    plain = source(ctx, train, weighting="none")
    contrasted = source(ctx, train, weighting="none", contrast="reverse")
    expected = (gradients(plain, train, ctx)[0] - gradients(plain, reversed_in_time(train), ctx)[0]) / 2
    np.testing.assert_allclose(gradients(contrasted, train, ctx)[0], expected, rtol=1e-5, atol=1e-9)


def test_static_contrast_vanishes_on_a_still_clip(ctx: RunContext) -> None:
    train = small_analysed("train")
    middle = train.clips.num_frames // 2
    still_frames = np.repeat(train.clips.frames[:, middle : middle + 1], train.clips.num_frames, axis=1)
    still = AnalysedClips(
        type(train.clips)(frames=still_frames, labels=train.clips.labels, ids=list(train.clips.ids)),
        None,
        train.descriptors,
        train.static,
    )
    gradient = source(ctx, train, contrast="static", weighting="none")
    moving = gradients(gradient, train, ctx)[0]
    assert np.abs(moving).max() > 0
    np.testing.assert_array_equal(gradients(gradient, still, ctx)[0], 0.0)


def test_warped_still_copy_keeps_a_still_clip_still_and_changes_a_noisy_one(ctx: RunContext) -> None:
    train = small_analysed("train")
    middle = train.clips.num_frames // 2
    held = np.repeat(train.clips.frames[:, middle : middle + 1], train.clips.num_frames, axis=1)
    rng = np.random.default_rng(0)
    noisy = np.clip(held + rng.normal(0.0, 0.05, size=held.shape), 0.0, 1.0).astype(np.float32)

    def clips_of(frames: np.ndarray) -> AnalysedClips:
        clip_set = type(train.clips)(frames=frames, labels=train.clips.labels, ids=list(train.clips.ids))
        return AnalysedClips(clip_set, None, train.descriptors, train.static)

    repeat = source(ctx, train, contrast="static", weighting="none")
    warp = source(ctx, train, contrast="static", weighting="none", still="warp")
    # a clip that does not move is its own still copy, made either way
    np.testing.assert_allclose(gradients(warp, clips_of(held), ctx)[0], 0.0, atol=1e-9)
    # a clip whose only change is noise: the repeated middle frame freezes the noise, the warp keeps it
    frozen = gradients(repeat, clips_of(noisy), ctx)[0]
    kept = gradients(warp, clips_of(noisy), ctx)[0]
    assert np.linalg.norm(kept) < 0.5 * np.linalg.norm(frozen)


def test_reverse_static_concatenates_odd_and_weighted_even_parts(ctx: RunContext) -> None:
    train = small_analysed("train")
    odd = gradients(source(ctx, train, contrast="reverse", weighting="none"), train, ctx)[0]
    both = gradients(
        source(ctx, train, contrast="reverse_static", contrast_static_weight=0.25, weighting="none"),
        train,
        ctx,
    )[0]
    assert both.shape[1] == 2 * odd.shape[1]
    np.testing.assert_allclose(both[:, : odd.shape[1]], odd, rtol=1e-5, atol=1e-9)
    static = gradients(source(ctx, train, contrast="static", weighting="none"), train, ctx)[0]
    # (even - still) = (g - still) - odd, scaled by the weight
    np.testing.assert_allclose(both[:, odd.shape[1] :], 0.25 * (static - odd), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("weighting", ["none", "mask"])
def test_region_gradients_sum_to_the_whole_frame_gradient(ctx: RunContext, weighting: str) -> None:
    train = small_analysed("train")
    whole = gradients(source(ctx, train, weighting=weighting), train, ctx)[0]
    split = gradients(source(ctx, train, weighting=weighting, regions=2), train, ctx)[0]
    assert split.shape[1] == 4 * whole.shape[1]
    cells = split.reshape(len(train), 4, whole.shape[1])
    assert all(np.abs(cells[:, r]).max() > 0 for r in range(4))
    np.testing.assert_allclose(cells.sum(axis=1), whole, rtol=1e-4, atol=1e-6 * np.abs(whole).max())


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("contrast", "mirror", "one of"),
        ("regions", 0, "integer >= 1"),
        ("contrast_static_weight", -0.5, "number >= 0"),
        ("region_split", "pixels", "one of"),
        ("still", "freeze", "one of"),
    ],
)
def test_bad_motion_options_name_the_field(field: str, value, allowed: str) -> None:
    with pytest.raises(ConfigValueError, match=f"{field}.*{allowed}"):
        DiffusionGradient(DiffusionGradientConfig(name="diffusion", **{field: value}))


def test_position_cells_sum_to_the_whole_frame_gradient(ctx: RunContext) -> None:
    train = small_analysed("train")
    selection = {"weighting": "none", "params": r"temporal\.weight"}
    whole = gradients(source(ctx, train, **selection), train, ctx)[0]
    split = gradients(source(ctx, train, **selection, regions=2, region_split="position"), train, ctx)[0]
    assert split.shape[1] == 4 * whole.shape[1]
    cells = split.reshape(len(train), 4, whole.shape[1])  # one temporal layer in the tiny model
    assert all(np.abs(cells[:, r]).max() > 0 for r in range(4))
    np.testing.assert_allclose(cells.sum(axis=1), whole, rtol=1e-4, atol=1e-6 * np.abs(whole).max())
    # position cells differ from loss cells (the sum over positions, not over the loss, is split)
    by_loss = gradients(source(ctx, train, **selection, regions=2), train, ctx)[0]
    assert not np.allclose(by_loss, split)


def test_position_split_refuses_layers_without_a_spatial_grid(ctx: RunContext) -> None:
    train = small_analysed("train")
    gradient = source(ctx, train, weighting="none", params="patch_in", regions=2, region_split="position")
    with pytest.raises(ValueError, match="patch_in.*region_split=loss"):
        gradients(gradient, train, ctx)


def test_position_split_needs_the_batched_engine() -> None:
    with pytest.raises(ConfigValueError, match="region_split.*engine=batched"):
        DiffusionGradient(
            DiffusionGradientConfig(name="diffusion", regions=2, region_split="position", engine="vmap")
        )


def test_a_conditional_model_on_unlabelled_clips_is_refused_naming_the_field(ctx: RunContext) -> None:
    train = small_analysed("train")
    unlabelled = AnalysedClips(
        type(train.clips)(
            frames=train.clips.frames, labels=np.full(len(train), -1), ids=list(train.clips.ids)
        ),
        train.flows,
        train.descriptors,
        train.static,
    )
    # the model stage refuses to train a conditional model on them, naming the field
    with pytest.raises(ConfigValueError, match="conditional.*no labels"):
        source(ctx, unlabelled, model=tiny_adapter(conditional=True))
    gradient = source(ctx, unlabelled, model=tiny_adapter(conditional=False))  # needs no labels
    assert np.isfinite(gradients(gradient, unlabelled, ctx)).all()
