"""Recurrent update blocks: correlation + flow -> motion features -> GRU -> flow increment (+ mask).

Attribute names are the official ones (``encoder.convc1``, ``gru.convz1``, ``flow_head.conv1``,
``mask.0``...): they are checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The official mask head multiplies its logits by 0.25 ("to balance gradients"); the trained weights
#: expect it, so it is part of the model, not a tunable.
MASK_SCALE = 0.25


class FlowHead(nn.Module):
    """Two 3x3 convolutions: hidden state -> flow increment (dx, dy) at 1/8 resolution."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def _gru_step(h: torch.Tensor, x: torch.Tensor, convz: nn.Module, convr: nn.Module, convq: nn.Module):
    hx = torch.cat([h, x], dim=1)
    z = torch.sigmoid(convz(hx))
    r = torch.sigmoid(convr(hx))
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return (1 - z) * h + z * q


class ConvGRU(nn.Module):
    """A GRU whose gates are 3x3 convolutions (RAFT-small)."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _gru_step(h, x, self.convz, self.convr, self.convq)


class SepConvGRU(nn.Module):
    """Two GRU updates, a horizontal (1x5) then a vertical (5x1) one (RAFT-large)."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = _gru_step(h, x, self.convz1, self.convr1, self.convq1)
        return _gru_step(h, x, self.convz2, self.convr2, self.convq2)


class SmallMotionEncoder(nn.Module):
    """Correlation (1x1 -> 96) and flow (7x7 -> 64, 3x3 -> 32) to 80 channels, plus the flow: 82."""

    out_dim = 82

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 96, 1, padding=0)
        self.convf1 = nn.Conv2d(2, 64, 7, padding=3)
        self.convf2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv = nn.Conv2d(128, 80, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class BasicMotionEncoder(nn.Module):
    """Correlation (1x1 -> 256, 3x3 -> 192) and flow (7x7 -> 128, 3x3 -> 64) to 126 channels + flow: 128."""

    out_dim = 128

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1, padding=0)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SmallUpdateBlock(nn.Module):
    """RAFT-small's update: ConvGRU over (context 64 + motion 82), flow head 96 -> 128 -> 2, no mask."""

    def __init__(self, corr_channels: int, hidden_dim: int = 96, context_dim: int = 64) -> None:
        super().__init__()
        self.encoder = SmallMotionEncoder(corr_channels)
        self.gru = ConvGRU(hidden_dim, input_dim=context_dim + SmallMotionEncoder.out_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=128)

    def forward(self, net, inp, corr, flow):
        """Shape: net (B, 96, h, w), inp (B, 64, h, w), corr (B, 196, h, w), flow (B, 2, h, w).

        Returns (new hidden state, None, flow increment (B, 2, h, w)).
        """
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, None, self.flow_head(net)


class BasicUpdateBlock(nn.Module):
    """RAFT-large's update: SepConvGRU, flow head 128 -> 256 -> 2, and the convex-upsampling mask head."""

    def __init__(self, corr_channels: int, hidden_dim: int = 128, context_dim: int = 128) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder(corr_channels)
        self.gru = SepConvGRU(hidden_dim, input_dim=context_dim + BasicMotionEncoder.out_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=256)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden_dim, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 8 * 8 * 9, 1, padding=0),
        )

    def forward(self, net, inp, corr, flow):
        """Shape: net (B, 128, h, w), inp (B, 128, h, w), corr (B, 324, h, w), flow (B, 2, h, w).

        Returns (new hidden state, mask logits (B, 576, h, w), flow increment (B, 2, h, w)).
        """
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, MASK_SCALE * self.mask(net), self.flow_head(net)


class TinyMotionEncoder(nn.Module):
    """RAFT-tiny's motion encoder: correlation (1x1 -> 64) and flow (7x7 -> 32, 3x3 -> 16) to 46
    channels, plus the flow: 48."""

    out_dim = 48

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 64, 1, padding=0)
        self.convf1 = nn.Conv2d(2, 32, 7, padding=3)
        self.convf2 = nn.Conv2d(32, 16, 3, padding=1)
        self.conv = nn.Conv2d(64 + 16, self.out_dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class TinyUpdateBlock(nn.Module):
    """RAFT-tiny's update: 3x3 ConvGRU over (context + motion 48), flow head hidden -> 64 -> 2, and a
    convex-upsampling mask head for x``upsampling`` (9 * upsampling^2 logits, scaled as large's)."""

    def __init__(self, corr_channels: int, hidden_dim: int = 48, context_dim: int = 32, upsampling: int = 2):
        super().__init__()
        self.encoder = TinyMotionEncoder(corr_channels)
        self.gru = ConvGRU(hidden_dim, input_dim=context_dim + TinyMotionEncoder.out_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=64)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden_dim, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 9 * upsampling * upsampling, 1, padding=0),
        )

    def forward(self, net, inp, corr, flow):
        """Shape: net (B, 48, h, w), inp (B, 32, h, w), corr (B, 147, h, w), flow (B, 2, h, w).

        Returns (new hidden state, mask logits (B, 9 * upsampling^2, h, w), flow increment (B, 2, h, w)).
        """
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, MASK_SCALE * self.mask(net), self.flow_head(net)
