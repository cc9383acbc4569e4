"""Criss-cross attention (Huang, Wang, Huang, Huang, Wei, Liu, CCNet: Criss-Cross Attention for Semantic
Segmentation, ICCV 2019, arXiv:1811.11721), recurrent (RCCA), as a gate.

Criss-cross attention (Sec. 3.2): Q, K = 1x1 convolutions of H to C' < C channels, V a 1x1 convolution to C.
Each position u attends to the H + W - 1 positions of its row and column (itself once):
    d_{i,u} = Q_u . Omega_{i,u},  A = softmax over i of d,  H'_u = gamma sum_i A_{i,u} Phi_{i,u} + H_u,
Omega_u (Phi_u) the keys (values) on u's criss-cross path; gamma is initialised to 0 (identity at init).
RCCA (Sec. 3.3) applies the same module R times with shared weights, so every position reaches every other;
the paper's default is R = 2. The paper only says C' < C; the official code uses C' = C / 8 (`reduction`).

Computed here with einsum over the row and the column; the official pure-PyTorch CrissCrossAttention
(speedinghzl/CCNet cc_attention/functions.py, from Serge-weihao/CCNet-Pure-Pytorch) computes the same with
bmm and a -inf diagonal on the column energies (tests/golden/criss_cross.pt: the official module applied
twice, as its RCCAModule does for recurrence 2).

Placement: the paper puts RCCA on the last feature map of a dilated ResNet (after a 3x3 conv reducing it to
C/4), before the segmentation head (Sec. 3.1, Fig. 2); the closest place in a classifier is the last features
before global pooling (`head`). Any feature size; channels must be at least `reduction`.
"""
import torch
from torch import nn


class CrissCrossAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8, recurrence: int = 2):
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"criss_cross: reduction={reduction} leaves no query/key channel of {channels}")
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        energy_col = torch.einsum("bchw,bcgw->bhwg", q, k)  # u=(h, w) against (g, w): its column
        self_mask = torch.eye(h, dtype=torch.bool, device=x.device).view(h, 1, h)
        energy_col = energy_col.masked_fill(self_mask, float("-inf"))  # u itself is counted once, in its row
        energy_row = torch.einsum("bchw,bchg->bhwg", q, k)  # u against (h, g): its row
        attn = torch.softmax(torch.cat([energy_col, energy_row], dim=3), dim=3)
        attn_col, attn_row = attn[..., :h], attn[..., h:]
        out = torch.einsum("bhwg,bcgw->bchw", attn_col, v) + torch.einsum("bhwg,bchg->bchw", attn_row, v)
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):  # RCCA: the same weights R times
            x = self.attend(x)
        return x
