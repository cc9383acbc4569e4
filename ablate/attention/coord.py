"""Coordinate Attention (Hou et al., CVPR 2021): channel attention factorised along H and along W.

Pool x over W and over H, concatenate the two strips, 1x1 conv C -> mip (mip = max(8, C // r), r = 32),
BN, h_swish, split back, one 1x1 conv mip -> C per direction, sigmoid: y = x * a_h * a_w.

timm's CoordAttn is the paper's module (its Hardswish is h_swish); the adapter pins mip to
max(8, C // r) and turns the conv biases on, as the official code (timm's default width is
C / 16 * 2/3 rounded to a multiple of 8, and its convs have no bias).
"""
from timm.layers.coord_attn import CoordAttn  # not re-exported by timm.layers (1.0.31)


class CoordinateAttention(CoordAttn):
    def __init__(self, channels: int, reduction: int = 32):
        super().__init__(channels, rd_channels=max(8, channels // reduction), bias=True)
