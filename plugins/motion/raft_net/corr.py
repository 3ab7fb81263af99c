"""All-pairs correlation pyramid and its windowed lookup (RAFT section 3.2).

The lookup returns, for every pixel, ``levels * (2r+1)^2`` correlation values sampled around its current
match. Their order is part of the trained weights (the motion encoder's first 1x1 convolution reads
them by channel), so it must be the official one: channel ``a * (2r+1) + b`` of a level holds the
correlation at ``(x + d_a, y + d_b)`` with ``d = linspace(-r, r, 2r+1)``: the *x* offset varies slowest.
(Upstream builds the offsets as ``meshgrid(dy, dx)`` and adds them to ``(x, y)`` coordinates; both
linspaces are equal, so the first meshgrid axis ends up moving x.) torchvision keeps the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coords_grid(batch: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel coordinates.

    Shape:
        returns: (batch, 2, height, width); channel 0 is x (column), channel 1 is y (row).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([xs, ys], dim=0).float()[None].repeat(batch, 1, 1, 1)


def bilinear_sampler(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` with absolute pixel coordinates (``align_corners=True``, zeros outside).

    Shape:
        image: (B, C, H, W); coords: (B, h, w, 2) as (x, y) in pixels; returns (B, C, h, w).
    """
    height, width = image.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    return F.grid_sample(image, grid, align_corners=True)


def lookup_offsets(radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (x, y) offsets of one lookup window, in the official channel order.

    Shape:
        returns: (2r+1, 2r+1, 2); ``[a, b] = (d_a, d_b)`` added to (x, y).
    """
    d = torch.linspace(-radius, radius, 2 * radius + 1, device=device)
    offset_x, offset_y = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([offset_x, offset_y], dim=-1)


class CorrPyramid:
    """The 4-D correlation volume of two feature maps, average-pooled ``levels - 1`` times over the
    second image's axes.

    Shape:
        fmap1, fmap2: (B, D, H, W) float32. Level ``i`` holds (B*H*W, 1, H/2^i, W/2^i); each level
        must keep at least 2 pixels per side (the sampler divides by side - 1), so H, W >= 2^levels.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = 4, radius: int = 4) -> None:
        self.levels = levels
        self.radius = radius
        batch, dim, height, width = fmap1.shape
        if min(height, width) < 2**levels:
            raise ValueError(
                f"feature maps of {height}x{width} are too small for {levels} correlation levels "
                f"(need >= {2**levels} per side, i.e. images >= {8 * 2**levels} px)"
            )
        corr = torch.matmul(fmap1.reshape(batch, dim, -1).transpose(1, 2), fmap2.reshape(batch, dim, -1))
        corr = corr / torch.sqrt(torch.tensor(float(dim)))
        corr = corr.reshape(batch * height * width, 1, height, width)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlation features around ``coords``.

        Shape:
            coords: (B, 2, H, W), (x, y) positions in the second feature map.
            returns: (B, levels * (2r+1)^2, H, W).
        """
        batch, _, height, width = coords.shape
        centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        offsets = lookup_offsets(self.radius, coords.device)[None]
        sampled = []
        for level, corr in enumerate(self.pyramid):
            window = bilinear_sampler(corr, centres / 2**level + offsets)
            sampled.append(window.reshape(batch, height, width, -1))
        return torch.cat(sampled, dim=-1).permute(0, 3, 1, 2).contiguous().float()
