"""Squeeze-and-Excitation (Hu et al., CVPR 2018): GAP -> FC(C/r) -> ReLU -> FC(C) -> sigmoid -> scale.

timm's SEModule is the paper's block; we only pin its hidden width to C // r exactly (timm rounds
to a multiple of 8, which differs from the paper on narrow layers).
"""
from timm.layers import SEModule


class SqueezeExcite(SEModule):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(channels, rd_channels=max(1, channels // reduction))
