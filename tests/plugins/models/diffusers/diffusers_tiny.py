"""Tiny random diffusers models of every supported family, built here (no downloads), re-randomised and
saved with ``save_pretrained``: what the diffusers tests attribute.

Several architectures initialise layers to zero (norm biases, AnimateDiff's motion-module outputs), so
at their own init many gradients are exactly zero and "gradients match" would hold trivially:
:func:`rerandomise` draws every parameter again.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: latent / pixel channels of every tiny denoiser
CHANNELS = 4
TEXT_DIM = 16
#: frames, height, width of the clips the tiny models are attributed on (9 = 1 + 4 * 2 for Wan's VAE)
CLIP_FRAMES, CLIP_SIZE = 9, 16

FAMILIES = ("wan", "cogvideox", "unet3d", "animatediff", "ltx", "hunyuan", "mochi")


def denoiser(family: str, in_channels: int = CHANNELS):
    """A tiny denoiser of ``family`` taking ``in_channels`` channels."""
    import diffusers

    c = in_channels
    if family == "wan":
        return diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=c, out_channels=c,
            text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
        )  # fmt: skip
    if family == "cogvideox":
        return diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=c, out_channels=c, time_embed_dim=8,
            text_embed_dim=TEXT_DIM, num_layers=1, sample_width=8, sample_height=8, sample_frames=9,
            patch_size=2, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        )  # fmt: skip
    if family == "unet3d":
        return diffusers.UNet3DConditionModel(
            in_channels=c, out_channels=c, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, cross_attention_dim=TEXT_DIM, attention_head_dim=4,
        )  # fmt: skip
    if family == "animatediff":
        return diffusers.UNetMotionModel(
            in_channels=c, out_channels=c, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), block_out_channels=(8, 16),
            layers_per_block=1, norm_num_groups=4, cross_attention_dim=TEXT_DIM, num_attention_heads=2,
            motion_num_attention_heads=2, motion_max_seq_length=16, use_motion_mid_block=False,
        )  # fmt: skip
    if family == "ltx":
        return diffusers.LTXVideoTransformer3DModel(
            in_channels=c, out_channels=c, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            num_layers=1, caption_channels=TEXT_DIM,
        )  # fmt: skip
    if family == "hunyuan":
        return diffusers.HunyuanVideoTransformer3DModel(
            in_channels=c, out_channels=c, num_attention_heads=2, attention_head_dim=8, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM,
            pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
        )  # fmt: skip
    if family == "mochi":
        return diffusers.MochiTransformer3DModel(
            patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
            in_channels=c, text_embed_dim=TEXT_DIM, time_embed_dim=4, max_sequence_length=8,
        )  # fmt: skip
    raise ValueError(family)


def vae(kind: str):
    """A tiny VAE: wan (4x spatial, 2x temporal), cogvideox (2x, 2x), ltx (2x, 2x), hunyuan (8x, 4x),
    mochi (8x, 6x), image (2x, per frame)."""
    import diffusers

    if kind == "wan":
        return diffusers.AutoencoderKLWan(
            base_dim=8, z_dim=CHANNELS, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
        )  # fmt: skip
    if kind == "cogvideox":
        return diffusers.AutoencoderKLCogVideoX(
            block_out_channels=(8, 8), down_block_types=("CogVideoXDownBlock3D",) * 2,
            up_block_types=("CogVideoXUpBlock3D",) * 2, latent_channels=CHANNELS, layers_per_block=1,
            norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7,
        )  # fmt: skip
    if kind == "ltx":
        return diffusers.AutoencoderKLLTXVideo(
            latent_channels=CHANNELS, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
            layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1), spatio_temporal_scaling=(True, False),
            decoder_spatio_temporal_scaling=(True, False), decoder_inject_noise=(False, False, False),
            upsample_residual=(False, False), upsample_factor=(1, 1), patch_size=1, patch_size_t=1,
            down_block_types=("LTXVideoDownBlock3D",) * 2, downsample_type=("conv", "conv"),
        )  # fmt: skip
    if kind == "hunyuan":
        return diffusers.AutoencoderKLHunyuanVideo(
            latent_channels=CHANNELS, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
            mid_block_add_attention=False, spatial_compression_ratio=8, temporal_compression_ratio=4,
            scaling_factor=0.9,
        )  # fmt: skip
    if kind == "mochi":
        return diffusers.AutoencoderKLMochi(
            encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4, latent_channels=CHANNELS,
            layers_per_block=(1,) * 5, add_attention_block=(False,) * 5, latents_mean=(0.1, 0.0, -0.1, 0.2),
            latents_std=(0.9, 1.1, 1.0, 1.3), scaling_factor=1.2,
        )  # fmt: skip
    if kind == "image":
        return diffusers.AutoencoderKL(
            block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=CHANNELS, norm_num_groups=4,
            layers_per_block=1, scaling_factor=0.5,
        )  # fmt: skip
    raise ValueError(kind)


def rerandomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn again: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), the rest
    ~ N(0, 0.1), so no layer is left at zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)
    return module


def scheduler(family: str):
    """The family's usual training scheduler (small configs of the real ones)."""
    import diffusers

    if family in ("unet3d", "animatediff"):
        return diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if family == "cogvideox":
        return diffusers.CogVideoXDDIMScheduler(
            prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0,
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        )  # fmt: skip
    if family == "wan":
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
    if family == "mochi":
        return diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0 if family == "hunyuan" else 1.0)


def tokenizer(max_length: int = 512):
    """A word-level tokenizer over a few motion words (what a T5 / CLIP tokenizer does, offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "a",
        "the",
        "car",
        "ball",
        "drives",
        "rolls",
        "moves",
        "left",
        "right",
        "up",
        "down",
        "pan",
        "tilt",
        "zoom",
        "camera",
    ]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(words)}}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def text_encoder(seed: int):
    """A tiny UMT5 encoder (Wan's text encoder class)."""
    import transformers

    config = transformers.UMT5Config(
        vocab_size=32,
        d_model=TEXT_DIM,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    return rerandomise(transformers.UMT5EncoderModel(config), seed).eval()


def clip_text_encoder(seed: int, width: int = TEXT_DIM):
    """A tiny CLIP text encoder (ModelScope's, AnimateDiff's, HunyuanVideo's second), 77 positions."""
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=32, hidden_size=width, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=width, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return rerandomise(transformers.CLIPTextModel(config), seed).eval()


def t5_text_encoder(seed: int):
    """A tiny T5 encoder (CogVideoX's, LTX-Video's, Mochi's text encoder class)."""
    import transformers

    config = transformers.T5Config(
        vocab_size=32,
        d_model=TEXT_DIM,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    return rerandomise(transformers.T5EncoderModel(config), seed).eval()


def llama_text_encoder(seed: int):
    """A tiny Llama (HunyuanVideo's first text encoder; its pipeline reads the third-last hidden state)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return rerandomise(transformers.LlamaModel(config), seed).eval()


#: family -> (pipeline class, its VAE kind) of :func:`save_text_pipeline`
TEXT_PIPELINES = {
    "cogvideox": ("CogVideoXPipeline", "cogvideox"),
    "unet3d": ("TextToVideoSDPipeline", "image"),
    "animatediff": ("AnimateDiffPipeline", "image"),
    "ltx": ("LTXPipeline", "ltx"),
    "hunyuan": ("HunyuanVideoPipeline", "hunyuan"),
    "mochi": ("MochiPipeline", "mochi"),
}


def save_text_pipeline(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny pipeline of ``family`` with its text encoder class(es) and tokenizer(s), saved whole."""
    import diffusers

    pipeline_class, vae_kind = TEXT_PIPELINES[family]
    clip_like = family in ("unet3d", "animatediff")
    parts = {
        "vae": rerandomise(vae(vae_kind), seed + 1),
        "scheduler": scheduler(family),
        "tokenizer": tokenizer(max_length=16 if clip_like else 512),
        "text_encoder": clip_text_encoder(seed + 2) if clip_like else t5_text_encoder(seed + 2),
        "unet" if clip_like else "transformer": rerandomise(denoiser(family), seed),
    }
    if family == "hunyuan":
        parts["text_encoder"] = llama_text_encoder(seed + 2)
        parts["text_encoder_2"] = clip_text_encoder(seed + 3, width=8)
        parts["tokenizer_2"] = tokenizer(max_length=16)
    if family == "animatediff":
        parts["motion_adapter"] = None
    getattr(diffusers, pipeline_class)(**parts).save_pretrained(folder)
    return folder


def save_wan_pipeline(folder: Path, seed: int = 0, with_vae: bool = True, with_text: bool = True) -> Path:
    """A tiny WanPipeline folder (UMT5 text encoder, Wan VAE, UniPC flow scheduler)."""
    import diffusers

    parts = {
        "transformer": rerandomise(denoiser("wan"), seed),
        "vae": rerandomise(vae("wan"), seed + 1) if with_vae else None,
        "scheduler": scheduler("wan"),
        "tokenizer": tokenizer() if with_text else None,
        "text_encoder": text_encoder(seed + 2) if with_text else None,
    }
    diffusers.WanPipeline(**parts).save_pretrained(folder)
    return folder


def save_family(folder: Path, family: str, seed: int = 0, vae_kind: str | None = None) -> Path:
    """A tiny folder for ``family``: its denoiser, scheduler and (``vae_kind``) a VAE, written the way a
    pipeline's save_pretrained lays them out (model_index.json + component folders); without a VAE the
    model works in pixel space on RGB clips, so its denoiser takes 3 channels."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    name = "unet" if family in ("unet3d", "animatediff") else "transformer"
    module = rerandomise(denoiser(family, CHANNELS if vae_kind else 3), seed)
    module.save_pretrained(folder / name)
    scheduler(family).save_pretrained(folder / "scheduler")
    index = {"_class_name": "DiffusionPipeline", name: ["diffusers", type(module).__name__]}
    if vae_kind:
        autoencoder = rerandomise(vae(vae_kind), seed + 1)
        autoencoder.save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", type(autoencoder).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def write_clips(
    folder: Path, count: int, seed: int = 0, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE
) -> list[str]:
    """``count`` RGB .npy clips of a textured square moving left or right; returns their ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        texture = rng.uniform(0, 255, (size, size * 2, 3))
        step = 1 if i % 2 == 0 else -1
        clip = np.stack([np.roll(texture, step * t, axis=1)[:, :size] for t in range(frames)]).astype(
            np.uint8
        )
        name = f"{'right' if step > 0 else 'left'}_{i:02d}.npy"
        np.save(folder / name, clip)
        ids.append(name)
    return ids
