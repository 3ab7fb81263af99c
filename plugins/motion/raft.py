"""RAFT dense optical flow (Teed & Deng 2020) from a local checkpoint, in plain PyTorch.

Loads official princeton-vl checkpoints (``raft-things.pth``, ``raft-small.pth``...) and torchvision
``raft_large``/``raft_small`` state dicts, or one written by ``mwga train-raft`` (RAFT-small or mwga's
RAFT-tiny, which works at stride 2 on 32x32 clips directly). Frames whose shorter side is below
``min_size`` (0: the variant's own minimum, 128 px for large/small, 16 px for tiny) are upsampled by an
integer factor; the flow is averaged back over each factor x factor block and divided by the factor.
Grey frames are replicated to three channels. Frame pairs are batched ``batch_size`` at a time. The
weights are loaded (and checked) when the estimator is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mwga_core import hookimpl
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.api.motion import MotionConfig, MotionEstimator

VARIANT_CHOICES = ("auto", "large", "small", "tiny")


@dataclass
class RaftConfig(MotionConfig):
    """Where the weights are and how to run them (see docs/reference.md)."""

    #: path of a .pth state dict (official or torchvision layout); required
    checkpoint: str = ""
    #: auto (from the weights), large, small or tiny (checked against the weights)
    variant: str = "auto"
    #: refinement iterations (RAFT's default 12; 20-32 in its evaluations)
    iterations: int = 12
    #: frame pairs per forward pass
    batch_size: int = 8
    #: frames whose shorter side is below this are upsampled by ceil(min_size / side); 0 = the variant's
    #: minimum (128 px for large/small, 16 px for tiny)
    min_size: int = 0


class RaftFlow(MotionEstimator):
    """RAFT-large, -small or -tiny on consecutive frame pairs."""

    def __init__(self, config: RaftConfig) -> None:
        super().__init__(config)
        c = config
        if not c.checkpoint:
            raise ConfigValueError(
                "checkpoint",
                c.checkpoint,
                "the path of a RAFT .pth file (official raft-things.pth / raft-small.pth, a torchvision "
                "raft_large / raft_small state dict, or one from `mwga train-raft`)",
            )
        if not Path(c.checkpoint).expanduser().is_file():
            raise ConfigValueError("checkpoint", c.checkpoint, "the path of an existing RAFT .pth file")
        if c.variant not in VARIANT_CHOICES:
            raise ConfigValueError("variant", c.variant, f"one of {list(VARIANT_CHOICES)}")
        if c.iterations < 1:
            raise ConfigValueError("iterations", c.iterations, "an integer >= 1")
        if c.batch_size < 1:
            raise ConfigValueError("batch_size", c.batch_size, "an integer >= 1")
        if c.min_size < 0:
            raise ConfigValueError("min_size", c.min_size, "0 (the variant's minimum) or a side in px")
        from mwga_plugins.motion.raft_net.checkpoints import load_raft

        self._model = load_raft(Path(c.checkpoint).expanduser(), c.variant)
        #: the smallest side the loaded variant's correlation pyramid accepts
        self.min_side = self._model.spec.min_side
        if 0 < c.min_size < self.min_side:
            raise ConfigValueError(
                "min_size",
                c.min_size,
                f"0 or an integer >= {self.min_side} (RAFT-{self._model.variant}'s correlation pyramid needs "
                f"sides >= {self.min_side} px)",
            )

    def model(self):
        """The network loaded from :attr:`RaftConfig.checkpoint`."""
        return self._model

    def upsampling_factor(self, height: int, width: int) -> int:
        """The integer factor frames of this size are enlarged by (1 when already large enough)."""
        return max(1, math.ceil((self.config.min_size or self.min_side) / min(height, width)))

    def estimate_pair(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        frames = np.stack([previous, following])[None, ..., None]
        return self.estimate(frames, RunContext())[0, 0]

    def estimate(self, frames: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Shape: frames (N, T, H, W, C) in [0, 1], C = 1 or 3 -> (N, T-1, H, W, 2) float32."""

        n, t, h, w, channels = frames.shape
        if channels not in (1, 3):
            raise DataError(f"RAFT needs grey (C=1) or RGB (C=3) frames, got {channels} channels")
        pairs = [(i, j) for i in range(n) for j in range(t - 1)]
        flows = np.empty((n, t - 1, h, w, 2), dtype=np.float32)
        size = self.config.batch_size
        with ctx.progress("flow (RAFT)", len(pairs)) as bar:
            for start in range(0, len(pairs), size):
                chunk = pairs[start : start + size]
                first = np.stack([frames[i, j] for i, j in chunk])
                second = np.stack([frames[i, j + 1] for i, j in chunk])
                out = self.flow_batch(first, second, ctx.device)
                for (i, j), flow in zip(chunk, out, strict=True):
                    flows[i, j] = flow
                bar.advance(len(chunk))
        return flows

    def flow_batch(self, first: np.ndarray, second: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Flow of each pair ``first[k] -> second[k]``.

        Shape: first, second (B, H, W, C) in [0, 1] -> (B, H, W, 2) float32 ``(dx, dy)``.
        """
        import torch
        import torch.nn.functional as F
        from mwga_plugins.motion.raft_net.raft import InputPadder

        model = self.model().to(device)
        _, h, w, _ = first.shape
        factor = self.upsampling_factor(h, w)

        def to_input(images: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = x.to(device) * 255.0
            if factor > 1:
                x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
            return x

        with torch.inference_mode():
            image1, image2 = to_input(first), to_input(second)
            padder = InputPadder(image1.shape)
            image1, image2 = padder.pad(image1, image2)
            flow = padder.unpad(model(image1, image2, iterations=self.config.iterations)[-1])
            if factor > 1:
                # The mean over a factor x factor block is the flow at the original pixel's centre (exact
                # for affine motion); displacements shrink by the same factor.
                flow = F.avg_pool2d(flow, factor) / factor
        return flow.permute(0, 2, 3, 1).float().cpu().numpy()


@hookimpl
def mwga_register_motion_estimators(register):
    register("raft", RaftFlow, RaftConfig, description="RAFT (large/small/tiny) from a local checkpoint")


@hookimpl
def mwga_register_commands(register):
    register(
        "train-raft", _train_raft, help="train RAFT on the synthetic benchmark's exact flow (docs/cli.md)"
    )


def _train_raft(args: list[str]) -> int:
    from mwga_plugins.motion.raft_net.train import main

    return main(args)
