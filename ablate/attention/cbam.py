"""CBAM (Woo et al., ECCV 2018): a channel gate then a spatial gate, refining a feature map.

Channel gate  M_c(F) = sigmoid(sum over pools p of MLP(p(F))), shared MLP C -> C/r -> C with biases
              (the official code's nn.Linear); pools `avg`, `max`, `lp` (L2) and `lse` as the official code.
Spatial gate  M_s(F) = sigmoid(conv_kxk([AvgPool_c(F); MaxPool_c(F)])), k = 7.

Why not timm's CbamModule: its MLP has no biases and its spatial conv always has BatchNorm, giving
ResNet-50 + CBAM 28.07M params instead of the paper's 28.09M. The official code adds BatchNorm
after the spatial conv, the paper does not: `spatial_norm: true` gives the official variant.
`arrangement: parallel` computes both gates from the same input and applies their product.
"""
import torch
from torch import nn


def _global_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C), one of the official code's channel descriptors."""
    if kind == "avg":
        return x.mean((2, 3))
    if kind == "max":
        return x.amax((2, 3))
    if kind == "lp":  # F.lp_pool2d(x, 2, (H, W)) of the official code: the L2 norm over positions
        return x.flatten(2).norm(p=2, dim=2)
    return torch.logsumexp(x.flatten(2), dim=2)  # lse


class ChannelGate(nn.Module):
    """CBAM's channel attention alone (the paper's channel-only ablation row)."""

    def __init__(self, channels: int, reduction: int = 16, pool_types=("avg", "max")):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool_types = tuple(pool_types)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        logits = sum(self.mlp(_global_pool(x, kind)) for kind in self.pool_types)
        return logits.sigmoid()[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialGate(nn.Module):
    """CBAM's spatial attention alone (the paper's spatial-only ablation row)."""

    def __init__(self, channels: int | None = None, kernel_size: int = 7, spatial_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not spatial_norm)
        self.norm = nn.BatchNorm2d(1, momentum=0.01) if spatial_norm else nn.Identity()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return self.norm(self.conv(pooled)).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, pool_types=("avg", "max"), kernel_size: int = 7,
                 arrangement: str = "channel_first", spatial_norm: bool = False):
        super().__init__()
        self.arrangement = arrangement
        self.channel = ChannelGate(channels, reduction, pool_types)
        self.spatial = SpatialGate(channels, kernel_size, spatial_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arrangement == "channel_first":
            return self.spatial(self.channel(x))
        if self.arrangement == "spatial_first":
            return self.channel(self.spatial(x))
        return x * self.channel.gate(x) * self.spatial.gate(x)
