"""Outlook attention (Yuan et al., VOLO, 2021): each position's k x k neighbourhood weights come from its centre.

A linear map of the (stride-pooled) centre token gives a k^2 x k^2 attention per head; it mixes the
neighbourhood's values (linear, no bias), the overlapping windows are folded back (summed) and
projected. The gate is x + OutlookAttention(LayerNorm(x)), the attention half of VOLO's Outlooker
(its MLP half is not attention); the output keeps x's shape for any stride.

timm's OutlookAttention is VOLO's code, on (B, H, W, C) tokens: we permute NCHW <-> NHWC around it.
"""
import torch
from timm.models.volo import OutlookAttention
from torch import nn


class OutlookGate(nn.Module):
    def __init__(self, channels: int, heads: int = 8, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        if channels % heads:
            raise ValueError(f"outlook: heads={heads} must divide the {channels} channels")
        if stride > kernel_size:
            raise ValueError(f"outlook: stride={stride} exceeds kernel_size={kernel_size}, leaving positions "
                             f"no window covers")
        self.norm = nn.LayerNorm(channels)
        self.attn = OutlookAttention(channels, heads, kernel_size=kernel_size, padding=kernel_size // 2, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)
        return x + self.attn(self.norm(tokens)).permute(0, 3, 1, 2)
