"""BAM (Park et al., BMVC 2018): a channel and a spatial branch, summed, gating a residual refinement.

Channel branch  M_c(F) = BN(MLP(AvgPool(F))), MLP C -> C/r -> C (BN + ReLU in the hidden layer).
Spatial branch  M_s(F) = BN(f_1x1(f_3x3,d(f_3x3,d(f_1x1(F))))): 1x1 reduce to C/r, two 3x3 convs with
                dilation d, 1x1 to one map; BN + ReLU after each inner conv. r = 16, d = 4.
Output          F' = F + F * sigmoid(M_c(F) + M_s(F)), the (B, C, 1, 1) and (B, 1, H, W) maps broadcast.

`combine: multiply` uses sigmoid(M_c * M_s), as the authors' official code (Jongchan/attention-module)
does instead of the paper's sum. That code also has no output BN on either branch; we keep the
paper's two output BNs in both modes so that `combine` changes one thing. Not in timm.
"""
import torch
from torch import nn


class BAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, num_dilated: int = 2,
                 combine: str = "add"):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.combine = combine
        # 1x1 convs on the pooled (B, C, 1, 1) vector: the paper's biased FC layers, kept 4-D for BatchNorm2d
        self.channel = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.BatchNorm2d(channels),
        )
        layers = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(num_dilated):
            # padding = dilation keeps H x W, so the map broadcasts against the input
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(hidden, 1, 1), nn.BatchNorm2d(1)]
        self.spatial = nn.Sequential(*layers)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        m_c = self.channel(x.mean((2, 3), keepdim=True))  # mean over (H, W), not the official square-only pool
        m_s = self.spatial(x)
        return (m_c + m_s if self.combine == "add" else m_c * m_s).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * self.gate(x)
