"""Contextual Transformer block (Li et al., TPAMI 2022): self-attention whose keys carry local context.

Static    K1 = ReLU(BN(GroupConv_kxk(X))), keys mined from each k x k neighbourhood (4 groups).
Attention W = GN(Conv_1x1(ReLU(BN(Conv_1x1([X; K1]))))), a k x k local matrix per position,
          shared by every 8 channels; values V = BN(Conv_1x1(X)).
Dynamic   K2 = SiLU(BN(V (*) W)), each position's k x k neighbourhood of V weighted by W.
Fuse      Y = a1 K1 + a2 K2, with per-channel softmax weights from GAP(K1 + K2) (SK-style, radix 2).
Stride 2 is a 3x3 average pool before the layer, as CoTNet's bottleneck.

timm has no CoT: written from the official CotLayer (JDAI-CV/CoTNet); the CUDA local aggregation is an
unfold here. Deviation: input and output widths may differ (the official layer keeps one width).
"""
import torch
import torch.nn.functional as F
from torch import nn

KEY_GROUPS = 4  # official key_embed groups
SHARE_PLANES = 8  # official: channels sharing one k x k attention map
RADIX = 2  # the fusion picks between static and dynamic context


class CoTConv(nn.Module):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, kernel_size: int = 3,
                 reduction: int = 2):
        super().__init__()
        if channels % KEY_GROUPS or out_channels % KEY_GROUPS or out_channels % SHARE_PLANES:
            raise ValueError(f"cot: input channels ({channels}) must be a multiple of {KEY_GROUPS} and output "
                             f"channels ({out_channels}) of {SHARE_PLANES}")
        self.kernel_size = kernel_size
        attn_maps = out_channels // SHARE_PLANES
        embed = max(1, out_channels // reduction)
        fuse = max(out_channels * RADIX // 4, 32)  # official: reduction_factor 4, at least 32

        self.pool = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        self.key_embed = nn.Sequential(
            nn.Conv2d(channels, out_channels, kernel_size, padding=kernel_size // 2, groups=KEY_GROUPS, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.embed = nn.Sequential(
            nn.Conv2d(channels + out_channels, embed, 1, bias=False), nn.BatchNorm2d(embed), nn.ReLU(inplace=True),
            nn.Conv2d(embed, kernel_size ** 2 * attn_maps, 1),
            nn.GroupNorm(attn_maps, kernel_size ** 2 * attn_maps))
        self.value_embed = nn.Sequential(nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU(inplace=True)
        self.se = nn.Sequential(
            nn.Conv2d(out_channels, fuse, 1), nn.BatchNorm2d(fuse), nn.ReLU(inplace=True),
            nn.Conv2d(fuse, RADIX * out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        k = self.key_embed(x)
        w = self.embed(torch.cat([x, k], dim=1))
        v = self.value_embed(x)
        B, C, H, W = v.shape
        kk = self.kernel_size ** 2
        # channel c uses attention map c % (C / 8), as the official aggregation kernel
        w = w.view(B, 1, C // SHARE_PLANES, kk, H, W)
        v = F.unfold(v, self.kernel_size, padding=self.kernel_size // 2)
        v = v.view(B, SHARE_PLANES, C // SHARE_PLANES, kk, H, W)
        dynamic = self.act(self.bn((w * v).sum(3).view(B, C, H, W)))

        paths = torch.stack([dynamic, k], dim=2)  # B, C, radix, H, W
        attn = self.se(paths.sum(2).mean((2, 3), keepdim=True)).view(B, C, RADIX).softmax(dim=2)
        return (paths * attn[..., None, None]).sum(2)
