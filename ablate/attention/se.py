"""Squeeze-and-Excitation (Hu et al., CVPR 2018): GAP -> FC(C/r) -> ReLU -> FC(C) -> sigmoid -> scale.

timm's SEModule is the paper's block; we only pin its hidden width to C // r exactly (timm rounds
to a multiple of 8, which differs from the paper on narrow layers). The journal version's ablations are knobs,
the paper's choice their default: the squeeze operator (Table 11: global average or max pooling) and the
excitation's gate (Table 12: sigmoid, tanh or ReLU in its place).
"""
from timm.layers import SEModule

SQUEEZES = ("avg", "max")
EXCITATIONS = ("sigmoid", "tanh", "relu")


class SqueezeExcite(SEModule):
    def __init__(self, channels: int, reduction: int = 16, squeeze: str = "avg", excitation: str = "sigmoid"):
        super().__init__(channels, rd_channels=max(1, channels // reduction), gate_layer=excitation)
        self.squeeze = squeeze

    def forward(self, x):
        if self.squeeze == "avg":  # timm's own path, the paper's
            return super().forward(x)
        s = self.fc2(self.act(self.bn(self.fc1(x.amax((2, 3), keepdim=True)))))
        return x * self.gate(s)
