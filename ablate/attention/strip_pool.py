"""Strip Pooling Module, SPM (Hou, Zhang, Cheng, Feng, Strip Pooling: Rethinking Spatial Pooling for Scene
Parsing, CVPR 2020, arXiv:2003.13328), as a gate.

Paper (Sec. 3.1, Fig. 2): x in R^{C x H x W} is pooled along each row and each column,
    y^h_{c,i} = (1/W) sum_j x_{c,i,j},   y^v_{c,j} = (1/H) sum_i x_{c,i,j},
each strip goes through a 1D convolution of kernel 3 (C -> C, along the strip), the two are expanded back
to H x W and summed, y_{c,i,j} = y^h_{c,i} + y^v_{c,j}, and
    z = Scale(x, sigmoid(f(y))),   f a 1x1 convolution (C -> C, with bias).
Defaults: strip convolutions of size 3, no normalisation (the paper's formula).

Knob `norm_act`: the official SPBlock (Andrew-Qibin/SPNet, models/resnet.py) puts a BatchNorm after each strip
convolution and a ReLU on their sum before f; `norm_act: true` is that module exactly (tests/golden/strip_pool.pt).
The official block returns the map sigmoid(f(y)) and its Bottleneck multiplies; this gate returns the product.

Placement: the official ResNet (models/resnet.py, `spm_on`) puts an SPM after the 3x3 convolution (its BN and
ReLU) of the last bottleneck of stages 1-3 and of every bottleneck of stage 4. ablate's placements cannot name
"after conv2 of the last block per stage"; the default is the closest slot inside every residual block
(`block`, where SE sits); `position: pattern, pattern: "layer*.*.act2"` puts it after every 3x3 conv's
activation instead. Works for any channel count and feature size (strips of length 1 included).
"""
import torch
from torch import nn


class StripPooling(nn.Module):
    def __init__(self, channels: int, norm_act: bool = False):
        super().__init__()
        # attribute order follows the official SPBlock, so state_dict order matches it
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=(3, 1), padding=(1, 0), bias=False)  # along H
        self.bn1 = nn.BatchNorm2d(channels) if norm_act else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=(1, 3), padding=(0, 1), bias=False)  # along W
        self.bn2 = nn.BatchNorm2d(channels) if norm_act else nn.Identity()
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=1, bias=True)  # f
        self.act = nn.ReLU() if norm_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_h = self.bn1(self.conv1(x.mean(dim=3, keepdim=True)))  # (B, C, H, 1): each row pooled
        y_v = self.bn2(self.conv2(x.mean(dim=2, keepdim=True)))  # (B, C, 1, W): each column pooled
        return x * self.conv3(self.act(y_h + y_v)).sigmoid()  # the sum broadcasts: y^h_{c,i} + y^v_{c,j}
