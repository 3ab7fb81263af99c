"""The built-in video denoiser: shapes, conditioning, temporal parameter names, config errors."""

from __future__ import annotations

import pytest
import torch
from mwga_plugins.models import video_denoiser
from mwga_plugins.models.video_denoiser import VideoDenoiserAdapter, VideoDenoiserConfig

from mwga_core.api.errors import ConfigValueError
from mwga_core.plugin_host.host import PluginHost

SHAPE = (5, 16, 16, 1)


def tiny(**fields) -> VideoDenoiserAdapter:
    return VideoDenoiserAdapter(VideoDenoiserConfig(name="video_denoiser", channels=8, blocks=1, **fields))


def test_registers_under_the_model_group() -> None:
    host = PluginHost()
    host.add_plugin(video_denoiser, "video-denoiser-test")
    assert "video_denoiser" in host.registry("model").names()


def test_forward_predicts_noise_of_the_input_shape() -> None:
    torch.manual_seed(0)
    module = tiny().build_fresh(SHAPE, num_classes=6)
    x = torch.randn(2, 1, 5, 16, 16)
    out = module(x, torch.tensor([3, 700]), torch.tensor([0, 5]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_conditional_output_depends_on_the_label() -> None:
    torch.manual_seed(0)
    module = tiny().build_fresh(SHAPE, num_classes=6)
    torch.nn.init.normal_(module.patch_out.weight)  # a zero-ish head would hide the difference
    x, t = torch.randn(1, 1, 5, 16, 16), torch.tensor([100])
    assert not torch.allclose(module(x, t, torch.tensor([0])), module(x, t, torch.tensor([1])))


def test_unconditional_model_has_no_class_embedding() -> None:
    module = tiny(conditional=False).build_fresh(SHAPE, num_classes=6)
    assert not any("class_embedding" in name for name, _ in module.named_parameters())
    assert module(torch.randn(1, 1, 5, 16, 16), torch.tensor([1]), None).shape == (1, 1, 5, 16, 16)


def test_temporal_parameters_are_the_across_frame_convolutions() -> None:
    adapter = tiny()
    module = adapter.build_fresh(SHAPE, num_classes=6)
    names = adapter.temporal_parameter_names(module)
    assert names == ["blocks.0.temporal.weight", "blocks.0.temporal.bias"]


def test_only_temporal_layers_mix_frames() -> None:
    # Zeroing the temporal convolutions makes every output frame depend on its input frame alone.
    torch.manual_seed(0)
    adapter = tiny()
    module = adapter.build_fresh(SHAPE, num_classes=6)
    with torch.no_grad():
        for name in adapter.temporal_parameter_names(module):
            module.get_parameter(name).zero_()
    x = torch.randn(1, 1, 5, 16, 16)
    changed = x.clone()
    changed[:, :, 0] += 1.0
    t, y = torch.tensor([10]), torch.tensor([0])
    torch.testing.assert_close(module(x, t, y)[:, :, 1:], module(changed, t, y)[:, :, 1:])


def test_default_size_is_in_the_intended_range() -> None:
    adapter = VideoDenoiserAdapter(VideoDenoiserConfig(name="video_denoiser"))
    count = sum(p.numel() for p in adapter.build_fresh((16, 32, 32, 1), 6).parameters())
    assert 50_000 <= count <= 300_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("channels", 7),
        ("blocks", 0),
        ("temporal_kernel", 2),
        ("schedule", "exp"),
        ("temporal_spatial_kernel", 2),
        ("temporal_attention_heads", 5),
        ("parametrization", "x0"),
    ],
)
def test_bad_values_name_the_field(field: str, value) -> None:
    with pytest.raises(ConfigValueError, match=field):
        VideoDenoiserAdapter(VideoDenoiserConfig(name="video_denoiser", **{field: value}))


def test_patch_must_divide_the_frame() -> None:
    with pytest.raises(ConfigValueError, match="patch"):
        tiny(patch=3).build_fresh(SHAPE, num_classes=6)


def test_v_parametrization_returns_the_input_at_pure_noise() -> None:
    # eps = sqrt(ab) v + sqrt(1 - ab) x_t: where ab is ~0 (the last cosine step), eps is x_t itself.
    torch.manual_seed(0)
    adapter = tiny(parametrization="v")
    module = adapter.build_fresh(SHAPE, num_classes=6)
    x = torch.randn(1, 1, 5, 16, 16)
    last = torch.tensor([adapter.config.diffusion_steps - 1])
    torch.testing.assert_close(module(x, last, torch.tensor([0])), x, atol=1e-3, rtol=0)
    assert not torch.allclose(module(x, torch.tensor([10]), torch.tensor([0])), x, atol=1e-2)


def test_temporal_attention_is_a_temporal_parameter_and_mixes_frames() -> None:
    torch.manual_seed(0)
    adapter = tiny(temporal_attention_heads=2, temporal_kernel=1)
    module = adapter.build_fresh(SHAPE, num_classes=6)
    names = adapter.temporal_parameter_names(module)
    assert "blocks.0.temporal_attention.qkv.weight" in names
    with torch.no_grad():
        torch.nn.init.normal_(module.blocks[0].temporal_attention.out.weight)
        torch.nn.init.normal_(module.patch_out.weight)
    x = torch.randn(1, 1, 5, 16, 16)
    changed = x.clone()
    changed[:, :, 0] += 1.0
    t, y = torch.tensor([10]), torch.tensor([0])
    # a 1-frame temporal kernel mixes nothing: only the attention can carry frame 0 to frame 4
    assert not torch.allclose(module(x, t, y)[:, :, 4], module(changed, t, y)[:, :, 4])
