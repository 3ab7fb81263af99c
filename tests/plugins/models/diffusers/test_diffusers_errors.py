"""model=diffusers refuses what cannot work in one line naming the field, file and what would: a wrong
folder, an unsupported class, a missing VAE when one is asked for, channels or sizes the model cannot take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import diffusers_tiny as tiny  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402

from mwga_core.api.errors import ConfigValueError, DataError, MwgaUserError  # noqa: E402


def adapter_for(path: Path | str, **fields) -> DiffusersAdapter:
    return DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(path), **fields))


def test_a_wrong_folder_is_named_with_what_it_holds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model.path is empty"):
        adapter_for("")
    with pytest.raises(DataError, match="no such folder"):
        adapter_for(tmp_path / "missing")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    with pytest.raises(DataError, match=r"neither a pipeline folder .* nor a denoiser folder .*\['a.mp4'\]"):
        adapter_for(tmp_path / "clips")
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(DataError, match="has no transformer/ or unet/"):
        adapter_for(pipeline)
    (pipeline / "transformer").mkdir()
    (pipeline / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "WanTransformer3DModel"})
    )
    with pytest.raises(DataError, match=r"transformer: no weights \(\*.safetensors or \*.bin\)"):
        adapter_for(pipeline)


def test_unsupported_classes_list_the_supported_ones(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "wan", "wan", vae_kind="wan")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(
        json.dumps({**config, "_class_name": "FluxTransformer2DModel"})
    )
    with pytest.raises(
        DataError, match="'FluxTransformer2DModel' is not supported; supported: WanTransformer3DModel"
    ):
        adapter_for(folder)
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**vae_config, "_class_name": "AutoencoderTiny"}))
    with pytest.raises(DataError, match="VAE class 'AutoencoderTiny' is not supported"):
        adapter_for(folder)


def test_a_missing_vae_is_an_error_when_latent_space_is_asked_for(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "ltx", "ltx")  # no vae/: pixel space by default
    assert adapter_for(folder).codec is None
    with pytest.raises(DataError, match=r"model.space=latent: .*ltx has no vae/"):
        adapter_for(folder, space="latent")
    latent = tiny.save_family(tmp_path / "ltx_vae", "ltx", vae_kind="ltx")
    pixel = adapter_for(latent, space="pixel")  # the VAE is not used: the latent denoiser cannot take pixels
    with pytest.raises(DataError, match="the clips have 3 channels; the denoiser takes 4"):
        pixel.model_shape((9, 16, 16, 3))


def test_shapes_the_denoiser_cannot_take_are_named(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "hunyuan", "hunyuan")  # pixel space, 2 x 2 patches
    with pytest.raises(
        DataError,
        match=r"grid \(T, H, W\) = \(9, 15, 15\) is not a multiple of the denoiser's patch \(1, 2, 2\)",
    ):
        adapter_for(folder).model_shape((9, 15, 15, 3))


def test_fields_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "mochi", "mochi")
    with pytest.raises(ConfigValueError, match="conditional=True is not allowed"):
        adapter_for(folder, conditional=True)
    with pytest.raises(ConfigValueError, match="context_frames=2"):
        adapter_for(folder, context_frames=2)
    with pytest.raises(ConfigValueError, match="model.text_length=5 is not allowed: expected 0 or 8"):
        adapter_for(tiny.save_family(tmp_path / "cog", "cogvideox"), text_length=5)
    with pytest.raises(MwgaUserError, match="does not sample clips"):
        adapter_for(folder).sample(None, None, 1, (9, 16, 16, 3), seed=0)
    assert not DiffusersAdapter.can_train


def test_importing_the_plugin_imports_neither_diffusers_nor_torch() -> None:
    """``mwga --help`` loads every plugin: the heavy libraries wait until a model is loaded."""
    import subprocess
    import sys

    code = (
        "import sys, mwga_plugins.models.diffusers; "
        "print(sorted(m for m in ('diffusers', 'transformers', 'torch') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    assert done.stdout.strip() == "[]"
