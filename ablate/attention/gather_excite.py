"""Gather-Excite (Hu et al., NeurIPS 2018): gather context over an extent e, excite by a sigmoid gate.

GE-θ-  gather = average pooling over extent e (global when e = 0), no parameters.
GE-θ   gather = log2(e) depth-wise 3x3 stride-2 convs, each with BN (ReLU between them).
Excite the gathered map is resized to H x W by nearest-neighbour interpolation, then x * sigmoid(.).
`excite_mlp` adds the GE-θ+ excite: 1x1 conv C -> C/16 -> ReLU -> 1x1 conv C, as the official prototxt.

Why not timm's GatherExcite: in timm 1.0.31 its parametric gather and its MLP pass `*dd` for `**dd`
and fail to build (TypeError). Deviation: GE-θ with global extent is a depth-wise conv spanning the
whole map, which needs the feature size that gates are not given, so it is refused.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

EXTENTS = (0, 2, 4, 8)


class GatherExcite(nn.Module):
    def __init__(self, channels: int, extent: int = 0, extra_params: bool = False, excite_mlp: bool = False):
        super().__init__()
        if extent not in EXTENTS:  # for direct construction: create_attention's Knob.check refuses it first
            raise ValueError(f"gather_excite.extent={extent} is not allowed ({'|'.join(map(str, EXTENTS))})")
        if extra_params and extent == 0:
            raise ValueError("gather_excite: extra_params needs extent 2, 4 or 8 "
                             "(a global parametric gather needs the feature size, which gates are not given)")
        self.extent = extent
        self.gather = None
        if extra_params:
            layers = []
            for i in range(int(math.log2(extent))):
                if i:
                    layers.append(nn.ReLU(inplace=True))
                layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                           nn.BatchNorm2d(channels)]
            self.gather = nn.Sequential(*layers)
        self.excite = nn.Identity()
        if excite_mlp:
            hidden = max(1, channels // 16)
            # the official GE-θ+ puts a ReLU between the gather's BN and the MLP
            pre = [nn.ReLU(inplace=True)] if extra_params else []
            self.excite = nn.Sequential(*pre, nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden, channels, 1))

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            return x.mean((2, 3), keepdim=True)
        # timm's pooling for extent e: window 2e-1, stride e, so windows overlap like the strided convs
        k = 2 * self.extent - 1
        return F.avg_pool2d(x, k, stride=self.extent, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the sigmoid runs on the gathered map, before the resize: nearest-neighbour resizing only copies
        # values, so this is the same gate at a fraction of the cost
        g = self.excite(self.gathered(x)).sigmoid()
        if g.shape[-2:] != (1, 1) and g.shape[-2:] != x.shape[-2:]:
            # a global (B, C, 1, 1) gate broadcasts: resizing it would only materialise a full-size copy
            g = F.interpolate(g, size=x.shape[-2:], mode="nearest")
        return x * g
