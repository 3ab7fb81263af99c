"""One small wrapper per diffusers denoiser architecture: input packing, shared inputs, output unpacking.

A :class:`Family` knows, for one denoiser class, how to call it on a clip in model space
x (B, C, T, H, W) at denoiser timesteps (B,) with the text condition, and return its prediction in the
same layout; which text inputs it takes; its default scheduler (for a bare denoiser folder); how its
pipeline encodes prompts; and which parameters mix information across frames (``params=temporal``).

Implementations (``FAMILIES``, keyed by the denoiser's ``_class_name``):
    WanTransformer3DModel: text only; flow matching.
    CogVideoXTransformer3DModel: frames before channels, 3-D rotary embeddings (made here), text of
        exactly ``max_text_seq_length`` tokens; v-prediction.
    UNet3DConditionModel: ModelScope text-to-video; eps.
    UNetMotionModel: AnimateDiff; the text is repeated per frame (the pipeline does it); eps.
    LTXVideoTransformer3DModel: packed tokens, attention mask, frame/height/width and rope scale; flow.
    HunyuanVideoTransformer3DModel: attention mask, pooled CLIP text, embedded guidance; flow.
    MochiTransformer3DModel: attention mask; inverted flow (timestep 1000 (1 - sigma), target x0 - eps).

Inputs every example shares (rotary embeddings, guidance, frame counts) are made inside ``predict`` from
shapes and constants, so under ``torch.func.vmap`` they are not batched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mwga_core.api.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: condition keyword names the wrappers pass on (each (B, ...) per example)
HIDDEN, MASK, POOLED = "encoder_hidden_states", "encoder_attention_mask", "pooled_projections"


@dataclass(frozen=True)
class SharedInputs:
    """Constants of a run that some families feed their denoiser.

    Attributes:
        vae_temporal: frames per latent frame (1 in pixel space), for LTX's rope scale.
        vae_spatial: pixels per latent pixel (1 in pixel space), for LTX and CogVideoX rotary embeddings.
        frame_rate: LTX's frame rate micro-condition.
        guidance: HunyuanVideo's embedded guidance scale (the pipeline feeds 1000 x it).
    """

    vae_temporal: int = 1
    vae_spatial: int = 1
    frame_rate: float = 25.0
    guidance: float = 6.0


class Family:
    """How to drive one denoiser class (see the module docstring)."""

    denoiser_class: ClassVar[str]
    #: scheduler config of a bare denoiser folder (the family's usual training schedule)
    default_scheduler: ClassVar[dict[str, Any]]
    #: the pipeline's default prompt length in tokens
    text_length: ClassVar[int]
    #: the denoiser takes an attention mask over the text tokens
    masked: ClassVar[bool] = False
    #: parameters that mix frames: a regular expression searched in the denoiser's parameter names
    temporal_pattern: ClassVar[str] = r"\.attn1\."

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 4))

    @property
    def text_dim(self) -> int:
        return int(self.config["text_dim"])

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text input, or None when the family takes none."""
        return None

    def patch(self) -> tuple[int, int, int]:
        """(frames, height, width) the model-space grid must be a multiple of."""
        return 1, 1, 1

    def fixed_text_length(self) -> int | None:
        """The only text length the denoiser accepts, or None when any length works."""
        return None

    def temporal_parameters(self, names: list[str]) -> list[str]:
        """The names (of the denoiser's parameters) that :attr:`temporal_pattern` selects."""
        pattern = re.compile(self.temporal_pattern)
        return [name for name in names if pattern.search("." + name)]

    def predict(
        self, denoiser: nn.Module, x: torch.Tensor, timestep: torch.Tensor, text: dict, shared: SharedInputs
    ) -> torch.Tensor:
        """The denoiser's prediction. Shape: x (B, C, T, H, W), timestep (B,) -> (B, C, T, H, W)."""
        raise NotImplementedError

    def encode_prompts(self, pipeline: Any, prompts: list[str], length: int) -> dict[str, torch.Tensor]:
        """The pipeline's own prompt encoding, on the pipeline's device. Shape: -> name -> (len(prompts), ...)."""
        embeds = pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=length, device=pipeline.device
        )
        return {HIDDEN: embeds[0]}


class WanFamily(Family):
    denoiser_class = "WanTransformer3DModel"
    default_scheduler = {
        "_class_name": "UniPCMultistepScheduler",
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
    }
    text_length = 512

    def patch(self) -> tuple[int, int, int]:
        p_t, p_h, p_w = self.config.get("patch_size", (1, 2, 2))
        return p_t, p_h, p_w

    def predict(self, denoiser, x, timestep, text, shared):
        return denoiser(
            hidden_states=x, timestep=timestep, encoder_hidden_states=text[HIDDEN], return_dict=False
        )[0]


class CogVideoXFamily(Family):
    denoiser_class = "CogVideoXTransformer3DModel"
    default_scheduler = {
        "_class_name": "CogVideoXDDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "snr_shift_scale": 3.0,
        "timestep_spacing": "trailing",
    }
    text_length = 226

    @property
    def text_dim(self) -> int:
        return int(self.config["text_embed_dim"])

    def patch(self) -> tuple[int, int, int]:
        p = int(self.config.get("patch_size", 2))
        return int(self.config.get("patch_size_t") or 1), p, p

    def fixed_text_length(self) -> int | None:
        return int(self.config.get("max_text_seq_length", 226))

    def rotary(self, frames: int, height: int, width: int, shared: SharedInputs, device) -> tuple | None:
        """The pipeline's 3-D rotary embeddings for a latent grid, or None when the model has none."""
        if not self.config.get("use_rotary_positional_embeddings"):
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        c, p = self.config, int(self.config.get("patch_size", 2))
        grid = (height // p, width // p)
        base = (int(c["sample_height"]) // p, int(c["sample_width"]) // p)
        head = int(c["attention_head_dim"])
        if c.get("patch_size_t") is None:  # CogVideoX 1.0
            crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
            return get_3d_rotary_pos_embed(head, crops, grid, frames, device=device)
        frames = (frames + c["patch_size_t"] - 1) // c["patch_size_t"]  # CogVideoX 1.5
        return get_3d_rotary_pos_embed(
            head, None, grid, frames, grid_type="slice", max_size=base, device=device
        )

    def predict(self, denoiser, x, timestep, text, shared):
        _, _, frames, height, width = x.shape
        ofs = None if self.config.get("ofs_embed_dim") is None else x.new_full((x.shape[0],), 2.0)
        out = denoiser(
            hidden_states=x.permute(0, 2, 1, 3, 4),  # CogVideoX takes (B, T, C, H, W)
            encoder_hidden_states=text[HIDDEN],
            timestep=timestep,
            ofs=ofs,
            image_rotary_emb=self.rotary(frames, height, width, shared, x.device),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4)


class UNet3DFamily(Family):
    denoiser_class = "UNet3DConditionModel"
    default_scheduler = {
        "_class_name": "DDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
    }
    text_length = 77
    temporal_pattern = r"\.(temp_convs|temp_attentions|transformer_in)\."

    @property
    def text_dim(self) -> int:
        return int(self.config["cross_attention_dim"])

    def predict(self, denoiser, x, timestep, text, shared):
        return denoiser(sample=x, timestep=timestep, encoder_hidden_states=text[HIDDEN], return_dict=False)[0]

    def encode_prompts(self, pipeline, prompts, length):
        return {HIDDEN: pipeline.encode_prompt(prompts, pipeline.device, 1, False)[0]}


class AnimateDiffFamily(UNet3DFamily):
    denoiser_class = "UNetMotionModel"
    default_scheduler = {**UNet3DFamily.default_scheduler, "beta_schedule": "linear"}
    temporal_pattern = r"\.motion_modules\."

    def predict(self, denoiser, x, timestep, text, shared):
        # the AnimateDiff pipeline repeats the prompt per frame: the UNet runs on (B T) frames
        per_frame = text[HIDDEN].repeat_interleave(x.shape[2], dim=0)
        return denoiser(sample=x, timestep=timestep, encoder_hidden_states=per_frame, return_dict=False)[0]


class LTXVideoFamily(Family):
    denoiser_class = "LTXVideoTransformer3DModel"
    default_scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
    text_length = 128
    masked = True

    @property
    def text_dim(self) -> int:
        return int(self.config["caption_channels"])

    def patch(self) -> tuple[int, int, int]:
        p = int(self.config.get("patch_size", 1))
        return int(self.config.get("patch_size_t", 1)), p, p

    def predict(self, denoiser, x, timestep, text, shared):
        b, c, t, h, w = x.shape
        p_t, p, _ = self.patch()
        grid = (t // p_t, h // p, w // p)
        # the pipeline's _pack_latents: (B, C, T, H, W) -> (B, tokens, C p_t p p)
        packed = x.reshape(b, c, grid[0], p_t, grid[1], p, grid[2], p)
        packed = packed.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)
        out = denoiser(
            hidden_states=packed,
            encoder_hidden_states=text[HIDDEN],
            timestep=timestep,
            encoder_attention_mask=text[MASK],
            num_frames=grid[0],
            height=grid[1],
            width=grid[2],
            rope_interpolation_scale=(
                shared.vae_temporal / shared.frame_rate,
                shared.vae_spatial,
                shared.vae_spatial,
            ),
            return_dict=False,
        )[0]
        out = out.reshape(b, *grid, -1, p_t, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def encode_prompts(self, pipeline, prompts, length):
        embeds, mask, *_ = pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=length, device=pipeline.device
        )
        return {HIDDEN: embeds, MASK: mask}


class HunyuanVideoFamily(Family):
    denoiser_class = "HunyuanVideoTransformer3DModel"
    default_scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0}
    text_length = 256
    masked = True
    # the double-stream and single-stream blocks' joint attention (not the text refiner's)
    temporal_pattern = r"^\.(transformer_blocks|single_transformer_blocks)\.\d+\.attn\."

    @property
    def text_dim(self) -> int:
        return int(self.config["text_embed_dim"])

    @property
    def pooled_dim(self) -> int | None:
        return int(self.config["pooled_projection_dim"])

    def patch(self) -> tuple[int, int, int]:
        p = int(self.config.get("patch_size", 2))
        return int(self.config.get("patch_size_t", 1)), p, p

    def predict(self, denoiser, x, timestep, text, shared):
        guidance = None
        if self.config.get("guidance_embeds", True):
            guidance = torch_full(x, shared.guidance * 1000.0)
        return denoiser(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=text[HIDDEN],
            encoder_attention_mask=text[MASK],
            pooled_projections=text[POOLED],
            guidance=guidance,
            return_dict=False,
        )[0]

    def encode_prompts(self, pipeline, prompts, length):
        embeds, pooled, mask = pipeline.encode_prompt(
            prompts, device=pipeline.device, max_sequence_length=length
        )
        return {HIDDEN: embeds, MASK: mask, POOLED: pooled}


class MochiFamily(Family):
    denoiser_class = "MochiTransformer3DModel"
    default_scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}
    text_length = 256
    masked = True

    @property
    def text_dim(self) -> int:
        return int(self.config["text_embed_dim"])

    def patch(self) -> tuple[int, int, int]:
        p = int(self.config.get("patch_size", 2))
        return 1, p, p

    def predict(self, denoiser, x, timestep, text, shared):
        return denoiser(
            hidden_states=x,
            encoder_hidden_states=text[HIDDEN],
            timestep=timestep,
            encoder_attention_mask=text[MASK],
            return_dict=False,
        )[0]

    def encode_prompts(self, pipeline, prompts, length):
        embeds, mask, *_ = pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=length, device=pipeline.device
        )
        return {HIDDEN: embeds, MASK: mask}


def torch_full(like: torch.Tensor, value: float) -> torch.Tensor:
    """(B,) of ``value`` for ``like`` (B, ...): a constant, so unbatched under vmap."""
    return like.new_full((like.shape[0],), value)


#: denoiser ``_class_name`` -> its family
FAMILIES: dict[str, type[Family]] = {
    family.denoiser_class: family
    for family in (
        WanFamily,
        CogVideoXFamily,
        UNet3DFamily,
        AnimateDiffFamily,
        LTXVideoFamily,
        HunyuanVideoFamily,
        MochiFamily,
    )
}


def family_of(denoiser_config: dict[str, Any], where: str) -> Family:
    """The family of a denoiser config (its ``_class_name``), or a :class:`DataError` listing the known ones."""
    name = denoiser_config.get("_class_name")
    if name not in FAMILIES:
        raise DataError(
            f"{where}: denoiser class {name!r} is not supported; supported: {', '.join(FAMILIES)}"
        )
    return FAMILIES[name](denoiser_config)
