"""Triplet Attention (Misra et al., WACV 2021): three rotated spatial gates, averaged.

Each branch rotates x so that one of C, H, W becomes the channel axis, Z-pools that axis
([max; mean], 2 maps), applies a k x k conv (k = 7, no bias) + BN and a sigmoid, gates the rotated
x and rotates back. Branches: C-W (pool H), H-C (pool W) and H-W (pool C); y = (y_cw + y_hc + y_hw) / 3.
Not in timm.
"""
import torch
from torch import nn


class ZPoolGate(nn.Module):
    """x * sigmoid(BN(conv_kxk([max_1(x); mean_1(x)]))): one branch, gating x's last two axes."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1, momentum=0.01)  # the official code's BN momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * self.norm(self.conv(pooled)).sigmoid()


class TripletAttention(nn.Module):
    def __init__(self, channels: int | None = None, kernel_size: int = 7):
        super().__init__()
        self.cw = ZPoolGate(kernel_size)
        self.hc = ZPoolGate(kernel_size)
        self.hw = ZPoolGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_cw = self.cw(x.transpose(1, 2)).transpose(1, 2)  # (B, H, C, W): H is pooled
        y_hc = self.hc(x.transpose(1, 3)).transpose(1, 3)  # (B, W, H, C): W is pooled
        return (y_cw + y_hc + self.hw(x)) / 3
