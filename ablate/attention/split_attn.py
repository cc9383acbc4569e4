"""ResNeSt split-attention conv (Zhang et al., 2020): radix R splits per cardinal group, fused by attention.

Split   U = ReLU(BN(GroupConv_3x3(X))) with R * G groups, giving R splits of C channels.
Attend  s = GAP(sum_r U_r);  z = ReLU(BN(FC1(s))) (C * R / reduction, at least 32 features);
        a = softmax over r of FC2(z) (sigmoid when R = 1);  V = sum_r a_r * U_r.

timm's SplitAttn with BatchNorm is the official SplAtConv2d (it applies BN + ReLU itself, as ResNeSt's
block drops bn2/act2); its attention width is rounded to a multiple of 8, equal to the official one
whenever C * R / reduction is. A strided block downsamples with ResNeSt's 3x3 average pool after the conv
(`avd: true`, avd_first=False: the paper's "average downsampling" and the released resnest50's setting);
`avd: false` puts the stride into the conv instead, as a bare SplAtConv2d does.
"""
from timm.layers import SplitAttn, make_divisible
from torch import nn


class SplitAttnConv(SplitAttn):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, radix: int = 2,
                 reduction: int = 4, groups: int = 1, avd: bool = True):
        attn_channels = make_divisible(channels * radix / reduction, min_value=32, divisor=8)  # as SplitAttn
        if channels % (groups * radix) or out_channels % groups or attn_channels % groups:
            raise ValueError(f"split_attn: groups * radix = {groups * radix} must divide the {channels} input "
                             f"channels, and groups={groups} the {out_channels} output and {attn_channels} "
                             f"attention channels")
        super().__init__(channels, out_channels, kernel_size=3, stride=1 if avd else stride, groups=groups,
                         radix=radix, rd_ratio=1.0 / reduction, norm_layer=nn.BatchNorm2d)
        self.avd = nn.AvgPool2d(3, stride, padding=1) if avd and stride > 1 else nn.Identity()

    def forward(self, x):
        return self.avd(super().forward(x))
