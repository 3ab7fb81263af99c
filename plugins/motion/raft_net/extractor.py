"""Feature and context encoders: images to 1/8-resolution feature maps (1/2 for RAFT-tiny).

Attribute names (``conv1``, ``norm1``, ``layer1.0.conv2``, ``downsample.1``...) are those of the official
RAFT code, because they are the keys of its checkpoints. A strided block keeps its shortcut norm under
two names (``norm3``/``norm4`` and ``downsample.1``), as the official code does, so official state dicts
(which list both) load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer of one encoder; ``instance`` has no parameters (affine=False, as upstream)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Sequential()
    raise ValueError(f"norm {kind!r} is not one of {NORMS}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (strided, projected) shortcut; RAFT-large's building block."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = make_norm(norm, planes)
        self.norm2 = make_norm(norm, planes)
        self.downsample: nn.Module | None = None
        # (large/small project only strided blocks; tiny's stages also widen at stride 1)
        if stride != 1 or in_planes != planes:
            self.norm3 = make_norm(norm, planes)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions at a quarter of the width; RAFT-small's building block."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = make_norm(norm, planes // 4)
        self.norm2 = make_norm(norm, planes // 4)
        self.norm3 = make_norm(norm, planes)
        self.downsample: nn.Module | None = None
        # (large/small project only strided blocks; tiny's stages also widen at stride 1)
        if stride != 1 or in_planes != planes:
            self.norm4 = make_norm(norm, planes)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class _Encoder(nn.Module):
    """7x7 stem (stride 2), three stages of two blocks (strides 1, 2, 2), 1x1 output convolution."""

    block: type[nn.Module]
    stem_width: int
    stage_widths: tuple[int, int, int]
    stem_stride: int = 2
    stage_strides: tuple[int, int, int] = (1, 2, 2)

    def __init__(self, output_dim: int, norm: str = "batch") -> None:
        super().__init__()
        self.norm1 = make_norm(norm, self.stem_width)
        self.conv1 = nn.Conv2d(3, self.stem_width, kernel_size=7, stride=self.stem_stride, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        widths = (self.stem_width, *self.stage_widths)
        strides = self.stage_strides
        self.layer1 = self._stage(widths[0], widths[1], norm, stride=strides[0])
        self.layer2 = self._stage(widths[1], widths[2], norm, stride=strides[1])
        self.layer3 = self._stage(widths[2], widths[3], norm, stride=strides[2])
        self.conv2 = nn.Conv2d(widths[3], output_dim, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d):
                if module.weight is not None:
                    nn.init.constant_(module.weight, 1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

    def _stage(self, in_planes: int, planes: int, norm: str, stride: int) -> nn.Sequential:
        return nn.Sequential(
            self.block(in_planes, planes, norm, stride=stride), self.block(planes, planes, norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, 3, H, W) -> (B, output_dim, H/s, W/s), s = total stride (8; 2 for tiny)."""
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class BasicEncoder(_Encoder):
    """RAFT-large's encoder: residual blocks, widths 64 -> 64, 96, 128."""

    block = ResidualBlock
    stem_width = 64
    stage_widths = (64, 96, 128)


class SmallEncoder(_Encoder):
    """RAFT-small's encoder: bottleneck blocks, widths 32 -> 32, 64, 96."""

    block = BottleneckBlock
    stem_width = 32
    stage_widths = (32, 64, 96)


class TinyEncoder(_Encoder):
    """RAFT-tiny's encoder (mwga's own): residual blocks, widths 32 -> 32, 48, 64, total stride 2 (only
    the stem is strided), so 32x32 frames give a 16x16 grid."""

    block = ResidualBlock
    stem_width = 32
    stage_widths = (32, 48, 64)
    stem_stride = 2
    stage_strides = (1, 1, 1)
