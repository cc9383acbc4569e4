"""Global Context block (Cao et al., GCNet, 2019): attention pooling, a bottleneck transform, fusion.

Context    c = sum_j softmax_j(W_k x_j) x_j, W_k a 1x1 conv C -> 1, softmax over the H*W positions.
Transform  t = W_2 ReLU(LN(W_1 c)), W_1 a 1x1 conv C -> C/r, W_2 C/r -> C; r = 16.
Fusion     `add` (the paper's default): x + t broadcast; `scale`: x * sigmoid(t).

timm's GlobalContext computes exactly this; the adapter pins the hidden width to C // r and zeroes
the transform's last conv weight and bias as the official code (timm zeroes the weight of the add
branch only), so the block starts as the identity (add) or x / 2 (scale). Kept from timm:
LayerNorm eps 1e-6 instead of 1e-5.
"""
from timm.layers import GlobalContext
from torch import nn


class GlobalContextBlock(GlobalContext):
    def __init__(self, channels: int, reduction: int = 16, fusion: str = "add"):
        super().__init__(channels, use_attn=True, fuse_add=fusion == "add", fuse_scale=fusion == "scale",
                         rd_channels=max(1, channels // reduction))

    def reset_parameters(self):
        super().reset_parameters()
        for mlp in (self.mlp_add, self.mlp_scale):
            if mlp is not None:  # the official last_zero_init: weight and bias of the last conv
                nn.init.zeros_(mlp.fc2.weight)
                nn.init.zeros_(mlp.fc2.bias)
