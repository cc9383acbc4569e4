"""SGE (Li, Hu, Yang, Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks,
2019, arXiv:1905.09646): per group of channels, a spatial attention map from the similarity of each position's
sub-feature to the group's mean sub-feature.

Per group (C/G channels), positions i = 1..m (m = HW):
  g = 1/m sum_i x_i,   c_i = g . x_i,   c^_i = (c_i - mu_c) / (sigma_c + eps),  sigma_c^2 = 1/m sum (c_i - mu_c)^2
  a_i = gamma c^_i + beta,   x^_i = x_i * sigmoid(a_i)                                         eps = 1e-5
2G parameters (gamma, beta per group); G = 64 (the paper's ResNet choice): SGE-ResNet50 has 25.559M parameters
(the paper's ImageNet comparison with ResNet50 at 25.557M). Init as the official code: gamma 0, beta 1.

Knobs: `groups` G. Where G does not divide the channels the module uses gcd(G, channels) groups (for G = 64 the
largest power of two up to 64 that divides them): every ResNet width is a multiple of 64, so ResNets get G itself,
and narrower or odd-width backbones still build. `unbiased_std`: sigma_c from torch's unbiased std (divides by
m - 1), as the official code (implus/PytorchInsight, resnet_sge.py); the paper divides by m. With one position the
unbiased std is undefined (nan), the paper's is 0.

Placement: in each bottleneck after its last BatchNorm, before the residual addition, as in the paper's ResNet
experiments and the official code (resnet_sge.py: `out = self.sge(out)` right after bn3): position `block`.
"""
import math

import torch
from torch import nn


class SpatialGroupEnhance(nn.Module):
    def __init__(self, channels: int, groups: int = 64, unbiased_std: bool = False):
        super().__init__()
        if groups < 1:
            raise ValueError(f"sge groups must be at least 1, got {groups}")
        self.groups = math.gcd(groups, channels)
        self.unbiased_std = unbiased_std
        self.eps = 1e-5
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))  # gamma; weight then bias: official order
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))  # beta

    def forward(self, x):
        b, c, h, w = x.shape
        grouped = x.reshape(b * self.groups, c // self.groups, h, w)
        sim = (grouped * grouped.mean((2, 3), keepdim=True)).sum(dim=1).reshape(b * self.groups, h * w)
        sim = sim - sim.mean(dim=1, keepdim=True)
        sim = sim / (sim.std(dim=1, keepdim=True, unbiased=self.unbiased_std) + self.eps)
        attn = sim.reshape(b, self.groups, h, w) * self.weight + self.bias
        return (grouped * torch.sigmoid(attn.reshape(b * self.groups, 1, h, w))).reshape(b, c, h, w)
