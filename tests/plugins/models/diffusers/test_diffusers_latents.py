"""model=diffusers in latent space: the pipeline's VAE encodes clips with its frame-count rule and the
pipeline's latent normalisation, reversal does not commute with encoding, and the encoder is named by
its weights' content (so encoded clips can be cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import diffusers_tiny as tiny  # noqa: E402
import torch  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402

from mwga_core.api.errors import DataError  # noqa: E402

CLIP_SHAPE = (tiny.CLIP_FRAMES, tiny.CLIP_SIZE, tiny.CLIP_SIZE, 3)
#: family -> (VAE, latent grid of a 9 x 16 x 16 clip, frames it encodes: Mochi's VAE takes 1 + 6k, so
#: ``model.frames=trim`` keeps 7)
LATENT = {
    "wan": ("wan", (tiny.CHANNELS, 5, 4, 4), 9),
    "cogvideox": ("cogvideox", (tiny.CHANNELS, 5, 8, 8), 9),
    "ltx": ("ltx", (tiny.CHANNELS, 5, 8, 8), 9),
    "mochi": ("mochi", (tiny.CHANNELS, 2, 2, 2), 7),
    "hunyuan": ("hunyuan", (tiny.CHANNELS, 3, 2, 2), 9),
    "animatediff": ("image", (tiny.CHANNELS, 9, 8, 8), 9),
}


def normalised(family: str, vae, z: torch.Tensor) -> torch.Tensor:
    """The pipelines' own latent normalisation, written out per family."""
    if family == "mochi":  # MochiPipeline decodes z * std / scaling_factor + mean: the inverse
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        return (
            (z - mean) * vae.config.scaling_factor / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        )
    if family == "wan":  # WanPipeline: (z - mean) * (1 / std), from the VAE config
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        return (z - mean) * (1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1))
    if family == "ltx":  # LTXPipeline._normalize_latents, with the VAE's buffers
        mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
        return (z - mean) * vae.config.scaling_factor / std
    return z * vae.config.scaling_factor  # CogVideoX, HunyuanVideo; the image VAE (no shift factor)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent")
    return {
        family: tiny.save_family(root / family, family, seed=5, vae_kind=kind)
        for family, (kind, _, _) in LATENT.items()
    }


def clips(count: int = 2) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, (count, *CLIP_SHAPE)).astype(np.float32)


@pytest.mark.parametrize("family", sorted(LATENT))
def test_clips_are_encoded_like_the_pipeline_and_reversal_is_encoded_not_flipped(
    folders, family: str
) -> None:
    import diffusers

    kind, expected_shape, used = LATENT[family]
    config = DiffusersModelConfig(name="diffusers", path=str(folders[family]), text_length=8, frames="trim")
    adapter = DiffusersAdapter(config)
    assert adapter.model_shape(CLIP_SHAPE) == expected_shape
    assert adapter.loss_grid(CLIP_SHAPE) == expected_shape[1:]
    assert not adapter.time_reversal_commutes and adapter.encoder_key().startswith("vae-")
    frames = clips()
    latents = adapter.encode(frames)
    assert tuple(latents.shape) == (2, *expected_shape)
    vae_folder = folders[family] / "vae"
    vae = getattr(diffusers, tiny.vae(kind).__class__.__name__).from_pretrained(vae_folder).eval()
    x = torch.from_numpy(frames[:, :used]).permute(0, 4, 1, 2, 3) * 2 - 1
    with torch.no_grad():
        if family == "animatediff":  # an image VAE: frame by frame
            flat = vae.encode(x.permute(0, 2, 1, 3, 4).flatten(0, 1)).latent_dist.mode()
            z = flat.reshape(2, tiny.CLIP_FRAMES, *flat.shape[1:]).permute(0, 2, 1, 3, 4)
        else:
            z = vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(latents, normalised(family, vae, z), atol=1e-5, rtol=1e-4)
    if family != "animatediff":  # a causal video VAE: encoding the reversed clip is not flipping latents
        reversed_latents = adapter.encode(np.ascontiguousarray(frames[:, :used][:, ::-1]))
        assert float((reversed_latents - latents.flip(2)).abs().max()) > 1e-3
    decoded = adapter.decode(latents)
    assert decoded.shape[0] == 2 and decoded.shape[2:] == CLIP_SHAPE[1:]
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_the_encoder_key_follows_the_vae_weights(folders, tmp_path: Path) -> None:
    first = DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folders["wan"]), text_length=8))
    other = tiny.save_family(tmp_path / "wan", "wan", seed=5, vae_kind="wan")
    assert (
        DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(other))).encoder_key()
        == first.encoder_key()
    )
    vae = tiny.rerandomise(tiny.vae("wan"), seed=99)
    vae.save_pretrained(other / "vae")
    assert (
        DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(other))).encoder_key()
        != first.encoder_key()
    )


def test_frame_counts_the_vae_cannot_encode_are_refused_or_trimmed(folders) -> None:
    exact = DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folders["wan"])))
    with pytest.raises(
        DataError, match=r"encodes 1 \+ 4k frames and the clips have 8: set dataset.num_frames=9 \(or 5\)"
    ):
        exact.model_shape((8, 16, 16, 3))
    trim = DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folders["wan"]), frames="trim"))
    assert trim.model_shape((8, 16, 16, 3)) == (tiny.CHANNELS, 3, 4, 4)  # the first 5 frames
    eight = np.random.default_rng(0).uniform(0, 1, (1, 8, 16, 16, 3)).astype(np.float32)
    torch.testing.assert_close(trim.encode(eight), trim.encode(eight[:, :5]))
    with pytest.raises(DataError, match="shrinks frames 4x; the clips are 18x18"):
        exact.model_shape((9, 18, 18, 3))


def test_grey_clips_are_repeated_to_rgb_with_a_warning(folders) -> None:
    adapter = DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folders["ltx"])))
    grey = clips(1)[..., :1]
    with pytest.warns(UserWarning, match="dataset.grayscale=false"):
        latents = adapter.encode(grey)
    torch.testing.assert_close(latents, adapter.encode(np.repeat(grey, 3, axis=-1)))
