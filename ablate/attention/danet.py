"""DANet's position and channel attention modules (Fu, Liu, Tian, Li, Bao, Fang, Lu, Dual Attention Network
for Scene Segmentation, CVPR 2019, arXiv:1809.02983), each as a gate.

Position attention (PAM, Sec. 3.2, Eqs. 1-2), A in R^{C x N}, N = H*W positions:
    B = W_b A, C' = W_c A, D = W_d A   (1x1 convolutions with bias; B, C' are C wide in the paper)
    s_ji = exp(B_i . C'_j) / sum_i exp(B_i . C'_j),   E_j = alpha sum_i s_ji D_i + A_j.
Channel attention (CAM, Sec. 3.3, Eqs. 3-4), no projection at all:
    x_ji = exp(A_i . A_j) / sum_i exp(A_i . A_j),     E_j = beta sum_i x_ji A_i + A_j.
alpha and beta are initialised to 0, so both start as the identity (paper, Sec. 3.2-3.3).

Where the official code (junfu1115/DANet, encoding/nn/da_att.py) differs from the paper, a knob gives it:
  PAM `reduction`: the paper's B and C' are C wide (1); the official query/key convs are C // 8 wide (8).
  CAM `energy`: the paper's softmax of the similarities A_i . A_j (`similarity`); the official code takes the
      softmax of max_i(A_i . A_j) - A_i . A_j (`max_minus`), i.e. of the negated similarities.
tests/golden/danet_position.pt and danet_channel.pt are the official modules (reduction=8, energy=max_minus).

Placement: the paper appends both modules to the last feature map of a dilated ResNet (after a 3x3 conv that
reduces it), before the segmentation head (Sec. 3.1, Fig. 2); the closest place in a classifier is the last
features before global pooling (`head`). Any channel count (PAM needs channels >= reduction) and feature size.
"""
import torch
from torch import nn


class PositionAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 1):
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"danet_position: reduction={reduction} leaves no query/key channel of {channels}")
        self.query_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))  # alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query_conv(x).flatten(2)  # (B, C', N)
        key = self.key_conv(x).flatten(2)
        value = self.value_conv(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (B, N_out j, N_in i): s_ji
        out = (value @ attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, energy: str = "similarity"):
        super().__init__()
        if energy not in ("similarity", "max_minus"):
            raise ValueError(f"danet_channel: energy must be similarity or max_minus, got {energy!r}")
        self.energy = energy
        self.gamma = nn.Parameter(torch.zeros(1))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(2)  # (B, C, N)
        energy = a @ a.transpose(1, 2)  # (B, C, C)
        if self.energy == "max_minus":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        out = torch.softmax(energy, dim=-1) @ a
        return self.gamma * out.view_as(x) + x
