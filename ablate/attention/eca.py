"""ECA (Wang et al., CVPR 2020): GAP -> 1D conv of size k across channels (no bias) -> sigmoid -> scale.

k is adaptive by default, k = |(log2 C + b) / gamma|_odd as in the paper (gamma=2, b=1), or fixed.
timm's EcaModule computes exactly this; one deviation kept from timm: k is at least 3, which only
differs from the paper below 8 channels.
"""
from timm.layers import EcaModule

from ablate.attention.registry import Knob, Placement, register_attention


@register_attention(
    "eca", kind="gate", placement=Placement("block"), source="timm.layers.EcaModule",
    paper="Wang et al., ECA-Net: Efficient Channel Attention, CVPR 2020 (arXiv:1910.03151)",
    knobs={
        "kernel_size": Knob(int, None, "1D conv size; null = adaptive from gamma and b",
                            low=1, high=31, odd=True, nullable=True),
        "gamma": Knob(float, 2.0, "adaptive kernel: gamma", low=0.5, high=8),
        "b": Knob(float, 1.0, "adaptive kernel: b", low=0, high=8),
    },
)
class EfficientChannelAttention(EcaModule):
    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2.0, b: float = 1.0):
        # timm derives k from `channels` when given, so pass channels only for the adaptive rule
        super().__init__(channels if kernel_size is None else None,
                         kernel_size=kernel_size or 3, gamma=gamma, beta=b)
