"""The paper's simulated gradient (eq. 3 and 4), for reproducing its experiments.

The paper never computes a model gradient: its eq. 4 replaces the projected gradient by
``(d_i W + eps_i) / ||d_i W + eps_i||``, a random projection of the HOOF descriptor plus noise "from the
loss landscape". mwga keeps the projection a separate stage, so this source produces the *unprojected*
stand-in, in a virtual parameter space of ``virtual_dim`` dimensions:

    g_i = ||d_i|| * ( (d_i / ||d_i||) A + noise_scale * eps_i )

with A a fixed (B, D) standard-normal matrix (the "Jacobian") and eps_i ~ N(0, I_D) drawn per clip from a
seed derived from the clip id. ``||d_i||`` is eq. 3's motion weight; it cancels under cosine scoring. A
Gaussian projection of g_i to P dims is distributed like eq. 4's ``d_i W + eps_i`` up to the
Johnson-Lindenstrauss approximation (for a fixed projection both terms are Gaussian with covariance
proportional to W^T W ~ (D/P) I), so ``projection.dim`` plays the role of the paper's P.

``noise_scale`` is the ratio of noise to signal amplitude: E||noise||^2 / E||signal||^2 = noise_scale^2,
so two clips with identical descriptors have expected cosine 1 / (1 + noise_scale^2). The paper does not
give its value; docs/method.md explains the default of 1.0 (equal energies) and shows the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.clips import AnalysedClips
from mwga_core.api.context import RunContext
from mwga_core.api.gradients import GradientChunk, GradientConfig, GradientSource
from mwga_core.config.checks import at_least


@dataclass
class SimulatedGradientConfig(GradientConfig):
    """Noise amplitude relative to the signal, and the virtual parameter count."""

    noise_scale: float = field(default=1.0, metadata=at_least(0))
    virtual_dim: int = field(default=4096, metadata=at_least(1))


class SimulatedGradient(GradientSource):
    """Eq. 4's noisy embedding of the HOOF descriptor, before projection."""

    def iter_gradients(self, clips: AnalysedClips, ctx: RunContext) -> Iterator[GradientChunk]:
        import torch

        descriptors = clips.descriptors.astype(np.float64)
        bins, dim = descriptors.shape[1], self.config.virtual_dim
        jacobian = ctx.rng("simulated-gradient", "jacobian", bins, dim).standard_normal((bins, dim))
        norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
        unit = np.divide(descriptors, norms, out=np.zeros_like(descriptors), where=norms > 0)
        noise = np.stack(
            [
                ctx.rng("simulated-gradient", "noise", clip_id).standard_normal(dim)
                for clip_id in clips.clips.ids
            ]
        )
        grads = norms * (unit @ jacobian + self.config.noise_scale * noise)
        yield GradientChunk(
            indices=np.arange(len(clips)), grads=torch.from_numpy(grads.astype(np.float32))[None]
        )


@hookimpl
def mwga_register_gradient_sources(register):
    register(
        "simulated",
        SimulatedGradient,
        SimulatedGradientConfig,
        description="the paper's eq. 4: a noisy random embedding of the HOOF descriptor",
    )
