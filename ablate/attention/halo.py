"""HaloNet attention (Vaswani et al., CVPR 2021): blocked local self-attention with a halo.

The map is cut into b x b query blocks; each block attends to its (b + 2h) x (b + 2h) neighbourhood
(the block plus a halo of h pixels) with relative position logits. Stride 2 subsamples the queries
of each block, the paper's strided self-attention.

timm's HaloAttn computes this; we pin q/k head width to out_channels / heads (q, k, v equally wide)
and check at construction that the feature size is a multiple of the block size, which timm needs.
"""
from timm.layers.halo_attn import HaloAttn


class HaloAttention(HaloAttn):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, block_size: int = 8,
                 halo_size: int = 3, heads: int = 8):
        if feat_size is not None and (feat_size[0] % block_size or feat_size[1] % block_size):
            raise ValueError(f"halo: feature size {feat_size[0]}x{feat_size[1]} is not divisible by "
                             f"block_size={block_size}; choose a block_size dividing both")
        if out_channels % heads:
            raise ValueError(f"halo: heads={heads} must divide the {out_channels} output channels")
        if stride not in (1, 2):
            raise ValueError(f"halo: stride must be 1 or 2, got {stride}")
        super().__init__(channels, out_channels, feat_size=feat_size, stride=stride, num_heads=heads,
                         dim_head=out_channels // heads, block_size=block_size, halo_size=halo_size)
