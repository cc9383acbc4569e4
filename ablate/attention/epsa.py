"""EPSANet's Pyramid Split Attention (Zhang, Zu, Lu, Zou, Meng, EPSANet: An Efficient Pyramid Squeeze
Attention Block on Convolutional Neural Network, 2021, arXiv:2105.14447).

The PSA module replaces a bottleneck's 3x3 conv (the EPSA block). S = 4 branches see the whole input:
  F_i = Conv(k_i x k_i, G_i)(X)                      (out/S channels each; k = 3, 5, 7, 9; G = 1, 4, 8, 16)
  Z_i = SEWeight(F_i) = sigmoid(W2 ReLU(W1 GAP(F_i)))  (reduction 16, one SEWeight shared by all branches)
  att_i = softmax_i(Z_i)                            (across the S branches, per channel)
  Out = Cat(att_0 * F_0, ..., att_{S-1} * F_{S-1})
Convs have no bias, SEWeight's 1x1 convs do; stride is applied in every branch's conv. The block keeps its
BN and ReLU after the module (the official EPSABlock: conv2 = PSAModule, then bn2, relu).
Defaults are the paper's EPSANet-50 (Small) and the official EPSABlock: kernels (3, 5, 7, 9), groups
(1, 4, 8, 16); ResNet-50 with PSA in every bottleneck has 22.56M parameters, as the paper reports for
EPSANet-50 (Small) (tests/test_catalogue_mods2.py). The Large variant is not reproduced here.

Knob for the official code: the official PSAModule concatenates the weighted branches last first
(Cat(F_3', F_2', F_1', F_0')), a channel permutation of the paper's equation; `reverse_concat: true` gives it.
Deviation: SEWeight's hidden width is at least 1 (the official `channels // 16` is 0 below 16 per branch).
Widths: input and output channels must allow each branch's groups (out / S and the input divisible by G_i),
else ValueError.

Placement: `conv`, every bottleneck's 3x3 conv in all stages (the paper's EPSANet replaces the 3x3 conv of
each ResNet bottleneck by PSA; official models/epsanet.py EPSABlock).
"""
import torch
from torch import nn


class SEWeight(nn.Module):
    """The official SEWeightModule: the SE excitation vector, without applying it."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class PyramidSplitAttention(nn.Module):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None,
                 kernels: tuple = (3, 5, 7, 9), groups: tuple = (1, 4, 8, 16), reduction: int = 16,
                 reverse_concat: bool = False):
        super().__init__()
        kernels, groups = [int(k) for k in kernels], [int(g) for g in groups]
        if len(kernels) != len(groups) or any(k < 1 or k % 2 == 0 for k in kernels) or min(groups) < 1:
            raise ValueError(f"epsa: kernels {kernels} (odd) and groups {groups} must pair up, one per branch")
        splits = len(kernels)
        if out_channels % splits:
            raise ValueError(f"epsa: output channels ({out_channels}) must be divisible by the {splits} branches")
        self.split = out_channels // splits
        for g in groups:
            if channels % g or self.split % g:
                raise ValueError(f"epsa: groups={g} must divide the input channels ({channels}) and each "
                                 f"branch's output channels ({self.split})")
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, self.split, k, stride=stride, padding=k // 2, groups=g, bias=False)
            for k, g in zip(kernels, groups))
        self.se = SEWeight(self.split, reduction)
        self.reverse_concat = reverse_concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # B, S, C/S, H, W
        att = torch.stack([self.se(feats[:, i]) for i in range(feats.shape[1])], dim=1).softmax(dim=1)
        out = feats * att
        if self.reverse_concat:
            out = out.flip(1)
        return out.flatten(1, 2)
