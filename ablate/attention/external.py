"""External Attention (Guo et al., 2021): attention against two small learned memories, linear in N.

On F (N x C, the H*W positions): A = F M_k^T (N x S), softmax over the N positions, then each row
L1-normalised over the S units (the paper's double normalisation, Algorithm 1); out = A M_v (N x C),
S = 64. The block is the official image code's (EANet): y = x + BN(conv1x1(EA(conv1x1(x)))); M_v
starts as M_k transposed, as there.

Deviations: the official block ends with a ReLU, dropped so the gate can sit before a residual add;
and the official code makes M_v a view of M_k's storage (tied by accident), we copy. Not in timm.
"""
import math

import torch
from torch import nn


class ExternalAttention(nn.Module):
    def __init__(self, channels: int, memory_units: int = 64):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.mk = nn.Conv1d(channels, memory_units, 1, bias=False)
        self.mv = nn.Conv1d(memory_units, channels, 1, bias=False)
        self.proj_out = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        # the official init: N(0, 2 / fan_out) for every conv, with M_k's std overwritten by M_v's
        std = math.sqrt(2.0 / channels)
        for conv in (self.proj_in, self.proj_out[0], self.mk):
            nn.init.normal_(conv.weight, 0.0, std)
        with torch.no_grad():
            self.mv.weight.copy_(self.mk.weight.permute(1, 0, 2))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the doubly normalised (B, S, N) map of `x` against M_k."""
        attn = self.mk(self.proj_in(x).flatten(2)).softmax(dim=-1)  # over the N positions
        return attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # L1 over the S units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.mv(self.attention(x)).view_as(x))
