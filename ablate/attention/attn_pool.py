"""Attention-weighted average pooling (Felbo et al., DeepMoji, EMNLP 2017), over the H*W positions.

e_t = x_t . w (one weight per channel, no bias);  a = softmax_t(e);  out = sum_t a_t x_t.
The Multi-Attention classifier's Keras AttentionWeightedAverage2D is exactly this on feature maps.

timm has no such pool: written from DeepMoji's attlayer.py; its weights init uniform(-0.05, 0.05) as
Keras' 'uniform'. Softmax stands for its exp / (sum + 1e-7), equal to within 1e-7.
`attention` and `pool` are public so composite heads (e.g. multi_attention) can reuse them.
"""
import torch
from torch import nn


def attention_weighted_average(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features and (B, H, W) weights summing to 1 -> (B, C)."""
    return torch.einsum("bchw,bhw->bc", x, attn)


class AttentionWeightedAverage(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        nn.init.uniform_(self.weight, -0.05, 0.05)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, W) weights, a softmax over all H*W positions."""
        scores = torch.einsum("bchw,c->bhw", x, self.weight)
        return scores.flatten(1).softmax(dim=1).view_as(scores)

    pool = staticmethod(attention_weighted_average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x, self.attention(x))
