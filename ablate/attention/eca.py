"""ECA (Wang et al., CVPR 2020): GAP -> 1D conv of size k across channels (no bias) -> sigmoid -> scale.

k is adaptive by default, k = |(log2 C + b) / gamma|_odd as in the paper (gamma=2, b=1), or fixed.
timm's EcaModule computes exactly this; one deviation kept from timm: k is at least 3, which only
differs from the paper below 8 channels.
"""
from timm.layers import EcaModule


class EfficientChannelAttention(EcaModule):
    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2.0, b: float = 1.0):
        # timm derives k from `channels` when given, so pass channels only for the adaptive rule
        super().__init__(channels if kernel_size is None else None,
                         kernel_size=kernel_size or 3, gamma=gamma, beta=b)
