"""Selective Kernel conv (Li et al., CVPR 2019): M paths of different receptive fields, fused by attention.

Split   U_m = ReLU(BN(GroupConv_m(X))), here M = 2: a 3x3 and a 3x3 with dilation 2 (for the paper's 5x5).
Fuse    s = GAP(sum_m U_m);  z = ReLU(BN(W s)) with d = max(C / r, L) features.
Select  a_m = softmax over m of (A_m z), per channel;  V = sum_m a_m * U_m.

timm's SelectiveKernel is the paper's unit; we pin the attention width to max(C // r, L) as the
paper (timm rounds C / r to a multiple of 8 and has no L) and default `split_input` to false: timm's
true feeds each path half the input channels, its own parameter-saving change.
"""
from timm.layers import SelectiveKernel


class SelectiveKernelConv(SelectiveKernel):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, reduction: int = 16,
                 groups: int = 32, min_attn_channels: int = 32, split_input: bool = False):
        path_in = channels // 2 if split_input else channels
        if (split_input and channels % 2) or path_in % groups or out_channels % groups:
            raise ValueError(f"sk: groups={groups} must divide the {path_in} input channels of each path and "
                             f"the {out_channels} output channels")
        super().__init__(
            channels, out_channels, kernel_size=[3, 5], stride=stride, groups=groups,
            rd_channels=max(out_channels // reduction, min_attn_channels), split_input=split_input)
