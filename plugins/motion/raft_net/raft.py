"""The RAFT model: encoders, correlation pyramid, recurrent refinement and flow upsampling.

Conventions kept from princeton-vl/RAFT (and torchvision, which matches it numerically):

* inputs are RGB in [0, 255]; the model maps them to ``2 * (x / 255) - 1``;
* sides must be multiples of 8 (:class:`InputPadder` pads by edge replication, centred as for Sintel);
* flow is estimated at 1/8 resolution as ``coords1 - coords0`` and upsampled by a learned convex
  combination of 3x3 neighbours (large) or bilinearly x8 (small);
* every iteration's upsampled flow is returned, for the sequence loss.

``tiny`` is mwga's own variant for the benchmark's 32x32 clips (no published weights; ``mwga train-raft
--variant tiny`` trains it): the same modules, but feature stride 2 instead of 8 (a 32x32 frame gives a
16x16 grid, so no input upsampling is needed), 3 correlation levels of radius 3, narrower encoders and
update block, a 3x3 ConvGRU, and convex x2 upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mwga_plugins.motion.raft_net.corr import CorrPyramid, coords_grid
from mwga_plugins.motion.raft_net.extractor import BasicEncoder, SmallEncoder, TinyEncoder
from mwga_plugins.motion.raft_net.update import BasicUpdateBlock, SmallUpdateBlock, TinyUpdateBlock
from torch import nn

VARIANTS = ("large", "small", "tiny")


@dataclass(frozen=True)
class RaftSpec:
    """The sizes that tell the variants apart."""

    hidden_dim: int
    context_dim: int
    corr_levels: int
    corr_radius: int
    feature_dim: int
    #: image pixels per feature-grid cell (the encoders' total stride)
    stride: int = 8

    @property
    def min_side(self) -> int:
        """The smallest image side the correlation pyramid accepts: the feature grid, halved
        ``corr_levels - 1`` times, must keep 2 cells (128 px for large/small, 16 px for tiny)."""
        return self.stride * 2**self.corr_levels


SPECS = {
    "large": RaftSpec(hidden_dim=128, context_dim=128, corr_levels=4, corr_radius=4, feature_dim=256),
    "small": RaftSpec(hidden_dim=96, context_dim=64, corr_levels=4, corr_radius=3, feature_dim=128),
    "tiny": RaftSpec(hidden_dim=48, context_dim=32, corr_levels=3, corr_radius=3, feature_dim=64, stride=2),
}

#: The smallest image side the 4-level correlation pyramid of large/small accepts (1/8 resolution,
#: halved 3 times, must keep 2 pixels).
MIN_SIDE = SPECS["large"].min_side


class RAFT(nn.Module):
    """RAFT-large (5.26 M parameters), RAFT-small (0.99 M) or mwga's RAFT-tiny (stride 2, see the module
    docstring).

    ``RAFT(small=True)`` is kept as the official code spells it; ``RAFT(variant="tiny")`` picks any.
    """

    def __init__(self, small: bool = False, variant: str | None = None) -> None:
        super().__init__()
        if variant is None:
            variant = "small" if small else "large"
        if variant not in VARIANTS:
            raise ValueError(f"RAFT variant {variant!r} is not one of {VARIANTS}")
        self.variant = variant
        spec = SPECS[self.variant]
        self.spec = spec
        corr_channels = spec.corr_levels * (2 * spec.corr_radius + 1) ** 2
        if variant == "tiny":
            self.fnet = TinyEncoder(output_dim=spec.feature_dim, norm="instance")
            self.cnet = TinyEncoder(output_dim=spec.hidden_dim + spec.context_dim, norm="none")
            self.update_block = TinyUpdateBlock(
                corr_channels, spec.hidden_dim, spec.context_dim, upsampling=spec.stride
            )
        elif variant == "small":
            self.fnet = SmallEncoder(output_dim=spec.feature_dim, norm="instance")
            self.cnet = SmallEncoder(output_dim=spec.hidden_dim + spec.context_dim, norm="none")
            self.update_block = SmallUpdateBlock(corr_channels, spec.hidden_dim, spec.context_dim)
        else:
            self.fnet = BasicEncoder(output_dim=spec.feature_dim, norm="instance")
            self.cnet = BasicEncoder(output_dim=spec.hidden_dim + spec.context_dim, norm="batch")
            self.update_block = BasicUpdateBlock(corr_channels, spec.hidden_dim, spec.context_dim)

    def forward(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        iterations: int = 12,
        flow_init: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Flow from ``image1`` to ``image2`` after each refinement iteration.

        Shape:
            image1, image2: (B, 3, H, W) RGB in [0, 255], H and W multiples of 8 and >=
                ``spec.min_side`` (128; 16 for tiny).
            flow_init: optional (B, 2, H/s, W/s) starting flow on the feature grid (s = ``spec.stride``),
                in grid cells.
            returns: ``iterations`` tensors (B, 2, H, W), ``(dx, dy)``; the last is the estimate.
        """
        image1 = (2 * (image1 / 255.0) - 1.0).contiguous()
        image2 = (2 * (image2 / 255.0) - 1.0).contiguous()
        batch = image1.shape[0]
        spec = self.spec

        # One encoder pass over both images; instance norm keeps each image separate.
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).float().split([batch, batch], dim=0)
        # Under mixed precision the correlation stays float32, as upstream builds it outside autocast.
        no_autocast = torch.autocast(image1.device.type, enabled=False)
        with no_autocast:
            corr_fn = CorrPyramid(fmap1, fmap2, levels=spec.corr_levels, radius=spec.corr_radius)

        context = self.cnet(image1)
        net, inp = torch.split(context, [spec.hidden_dim, spec.context_dim], dim=1)
        net = torch.tanh(net)
        inp = torch.relu(inp)

        _, _, height, width = fmap1.shape
        coords0 = coords_grid(batch, height, width, device=image1.device)
        coords1 = coords0.clone()
        if flow_init is not None:
            coords1 = coords1 + flow_init

        predictions = []
        for _ in range(iterations):
            # The lookup position is not differentiated through (as upstream).
            coords1 = coords1.detach()
            with no_autocast:
                corr = corr_fn(coords1)
            flow = coords1 - coords0
            net, up_mask, delta_flow = self.update_block(net, inp, corr, flow)
            coords1 = coords1 + delta_flow
            if up_mask is None:
                predictions.append(upflow8(coords1 - coords0))
            else:
                predictions.append(convex_upsample(coords1 - coords0, up_mask, spec.stride))
        return predictions


def upflow8(flow: torch.Tensor) -> torch.Tensor:
    """RAFT-small's upsampling: bilinear (corners aligned) x8, values x8.

    Shape: flow (B, 2, h, w) -> (B, 2, 8h, 8w).
    """
    height, width = flow.shape[-2:]
    return 8 * F.interpolate(flow, size=(8 * height, 8 * width), mode="bilinear", align_corners=True)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """RAFT-large's (and tiny's) upsampling: each full-resolution pixel is a softmax-weighted (convex)
    combination of the 3x3 coarse neighbours of its coarse cell.

    Shape:
        flow: (B, 2, h, w); mask: (B, 9*f*f, h, w) logits laid out as (9, f, f), f = ``factor``;
        returns: (B, 2, f*h, f*w).
    """
    batch, _, height, width = flow.shape
    f = factor
    weights = torch.softmax(mask.view(batch, 1, 9, f, f, height, width), dim=2)
    neighbours = F.unfold(f * flow, [3, 3], padding=1).view(batch, 2, 9, 1, 1, height, width)
    up = torch.sum(weights * neighbours, dim=2)  # (B, 2, f, f, h, w): sub-row, sub-column, row, column
    return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2, f * height, f * width)


class InputPadder:
    """Pads images to multiples of 8 by edge replication, split evenly between the two sides
    (upstream's ``mode='sintel'``), and crops flow back.

    Shape:
        dims: the (..., H, W) shape of the images to pad.
    """

    def __init__(self, dims: tuple[int, ...] | torch.Size) -> None:
        self.height, self.width = int(dims[-2]), int(dims[-1])
        pad_h = (-self.height) % 8
        pad_w = (-self.width) % 8
        # F.pad order: left, right, top, bottom.
        self.padding = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]

    def pad(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """Shape: each (B, C, H, W) -> (B, C, H + pad_h, W + pad_w)."""
        return [F.pad(image, self.padding, mode="replicate") for image in images]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (..., H + pad_h, W + pad_w) -> (..., H, W)."""
        left, _, top, _ = self.padding
        return x[..., top : top + self.height, left : left + self.width]
