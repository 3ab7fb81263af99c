"""``model=diffusers``: attribute your own video diffusion model saved with diffusers (docs/own-model.md).

Modules: ``folder`` (what a save_pretrained folder holds), ``families`` (one wrapper per denoiser
architecture), ``objectives`` (eps / v / flow / Mochi's inverted flow from the scheduler config),
``latents`` (the pipeline's VAE), ``conditioning`` (captions, precomputed embeddings, the empty prompt),
``architectures`` (denoisers mwga builds and trains itself, ``model.architecture=wan``), ``adapter`` (the
model adapter and its config). Importing any of them imports neither diffusers nor torch.
"""

from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig

from mwga_core import hookimpl


@hookimpl
def mwga_register_models(register):
    register(
        "diffusers",
        DiffusersAdapter,
        DiffusersModelConfig,
        description="a diffusers video pipeline or denoiser folder (Wan, CogVideoX, LTX, ...), or a Wan mwga trains",
    )
