"""BoTNet MHSA (Srinivas et al., CVPR 2021): global multi-head self-attention with 2D relative positions.

For each head, logits = (q k^T + q r^T) / sqrt(d) with r = R_h + R_w relative embeddings of the fixed
feature size; out = softmax(logits) v; q, k, v are bias-free 1x1 projections, all `out_channels` wide.
Stride 2 is a 2x2 average pool after the attention, as the paper.

timm's BottleneckAttn computes this; we pin q/k head width to out_channels / heads and scale the
position logits too, as the reference gist (which scales q before both products). The module is
built for one input size (feat_size), like the paper.
"""
from timm.layers.bottleneck_attn import BottleneckAttn


class BotMHSA(BottleneckAttn):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, heads: int = 4):
        if feat_size is None:
            raise ValueError("bot_mhsa needs the input feature size (H, W) for its relative position embedding")
        if out_channels % heads:
            raise ValueError(f"bot_mhsa: heads={heads} must divide the {out_channels} output channels")
        if stride not in (1, 2):
            raise ValueError(f"bot_mhsa: stride must be 1 or 2, got {stride}")
        super().__init__(channels, out_channels, feat_size=tuple(feat_size), stride=stride, num_heads=heads,
                         dim_head=out_channels // heads, scale_pos_embed=True)
