"""Efficient Local Attention (Xu, Wan, ELA: Efficient Local Attention for Deep Convolutional Neural
Networks, 2024, arXiv:2403.01123).

Coordinate-attention-like strip pooling without CA's channel reduction and BatchNorm:
  z_h = mean_w X (B, C, H),  z_w = mean_h X (B, C, W)
  y_h = sigmoid(GN(F_h(z_h))),  y_w = sigmoid(GN(F_w(z_w)))
  Y = X * y_h (broadcast over W) * y_w (broadcast over H)
F is one 1D conv of size k over the spatial axis (no bias), shared by both directions, as is the GroupNorm.
Defaults: ELA-B, the configuration of the PyTorch listing attributed to the paper: k = 7, depthwise (one channel
per conv group), GN with 16 groups.
The paper's four versions: ELA-T k=5, GN 32; ELA-B k=7, GN 16 (both depthwise); ELA-S k=5 and ELA-L k=7, with
conv groups C / 8 (`channels_per_group: 8`) and GN 16.

Code: we found no repository released by the authors (searching public code found only third-party copies,
one noting "official github: none"), so there is no golden fixture; tests/test_catalogue_mods2.py checks the
formula by an independent computation.
Deviation, only where GroupNorm cannot build: GN uses the largest group count <= norm_groups that divides C
(e.g. 24 channels, 16 groups: 12); the conv's channels_per_group must divide C, else ValueError.

Placement: the paper integrates ELA into ResNet and MobileNet blocks as the CA module it revises; we put it
in the `block` slot (after the block's last BN, before the residual add, where SE and CA sit). This is our
reading, not a position we could confirm from the paper's text in this session.
"""
import torch
from torch import nn


class EfficientLocalAttention(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 7, norm_groups: int = 16, channels_per_group: int = 1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ela: kernel_size={kernel_size} must be odd")
        if channels % channels_per_group:
            raise ValueError(f"ela: channels_per_group={channels_per_group} must divide the {channels} channels")
        groups = min(norm_groups, channels)
        while channels % groups:
            groups -= 1
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2,
                              groups=channels // channels_per_group, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_h = torch.sigmoid(self.gn(self.conv(x.mean(3))))
        y_w = torch.sigmoid(self.gn(self.conv(x.mean(2))))
        return x * y_h[..., None] * y_w[..., None, :]
