"""Shuffle Attention (Zhang, Yang, SA-Net: Shuffle Attention for Deep Convolutional Neural Networks,
ICASSP 2021, arXiv:2102.00240).

X (C channels) is split into G groups, each group X_k into halves X_k1 (channel branch) and X_k2 (spatial):
  X'_k1 = sigmoid(W1 GAP(X_k1) + b1) * X_k1
  X'_k2 = sigmoid(W2 GN(X_k2) + b2) * X_k2
W1, b1, W2, b2 are per-channel (C / 2G each) and shared across groups; GN has one group per channel.
The halves are concatenated, the groups aggregated, and a channel shuffle with 2 groups mixes them.
Init as the official sa_layer: W = 0, b = 1. Default G = 64 (official sa_layer, the paper's SA-Net).

Widths: the official layer needs C divisible by 2G (ResNet-50's 256..2048 all are at G = 64). Deviation,
only where the official layer cannot build: G drops to the largest group count <= `groups` that divides
C / 2 (e.g. 32 channels: G = 16); odd C raise ValueError.

Placement: `block`, after the bottleneck's last BN before the residual add, as SE: the paper inserts SA in
every bottleneck of its SA-Net ResNets, and the official models/sa_resnet.py SABottleneck applies
`self.sa` right after bn3.
Paper (abstract): SA adds "300" parameters to ResNet-50's 25.56M; the official layer at G = 64 adds 708
(6 per channel pair group); both round to 25.56M.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ShuffleAttention(nn.Module):
    def __init__(self, channels: int, groups: int = 64):
        super().__init__()
        if channels % 2:
            raise ValueError(f"shuffle_attn: channels ({channels}) must be even (two branches per group)")
        groups = min(groups, channels // 2)
        while channels % (2 * groups):
            groups -= 1
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x0, x1 = x.reshape(b * self.groups, -1, h, w).chunk(2, dim=1)
        xn = x0 * torch.sigmoid(self.cweight * x0.mean((2, 3), keepdim=True) + self.cbias)
        xs = x1 * torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
        out = torch.cat([xn, xs], dim=1).reshape(b, c, h, w)
        return F.channel_shuffle(out, 2)
