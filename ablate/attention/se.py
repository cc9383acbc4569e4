"""Squeeze-and-Excitation (Hu et al., CVPR 2018): GAP -> FC(C/r) -> ReLU -> FC(C) -> sigmoid -> scale.

timm's SEModule is the paper's block; we only pin its hidden width to C // r exactly (timm rounds
to a multiple of 8, which differs from the paper on narrow layers).
"""
from timm.layers import SEModule

from ablate.attention.registry import Knob, Placement, register_attention


@register_attention(
    "se", kind="gate", placement=Placement("block"), source="timm.layers.SEModule",
    paper="Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 (arXiv:1709.01507)",
    knobs={"reduction": Knob(int, 16, "channel reduction ratio r", low=1, high="channels")},
)
class SqueezeExcite(SEModule):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(channels, rd_channels=max(1, channels // reduction))
