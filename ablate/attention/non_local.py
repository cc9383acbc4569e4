"""Non-local block (Wang, Girshick, Gupta, He, Non-local Neural Networks, CVPR 2018, arXiv:1711.07971),
embedded-Gaussian version, 2D.

  y_i = sum_j softmax_j(theta(x_i)^T phi(x^_j)) g(x^_j),   z_i = BN(W_z y_i) + x_i
theta, phi, g and W_z are 1x1 convs (with bias), theta/phi/g to C/2 channels (the paper's bottleneck, Sec. 3.3);
x^ is x subsampled by a 2x2 max pool (the subsampling trick of Sec. 3.3, which the paper uses for every block it
studies); BN after W_z with its scale initialised to zero, so the block starts as the identity (Sec. 4).

Knobs:
  reduction      inner width C // reduction (2, the paper's C/2).
  sub_sample     input: pool x before phi and g (the paper's eq. for x^, and both official codes); projections:
                 pool after phi and g (the paper's remark on implementing it in Fig. 2); none.
                 Maps too small to pool (H or W below 2) are not pooled.
  scale          multiply theta^T phi by (C // reduction)^-1/2 before the softmax: the official code
                 (video-nonlocal-net's NONLOCAL.USE_SCALE, on by default; SlowFast's Nonlocal always); the paper
                 has no scale, so off by default.

Built on timm's NonLocalAttn (its convs, BN and zero-scale init), with the paper's C/2 width instead of timm's C/8,
the pooling, and the scale above (timm scales by C^-1/2 of the input width).

Placement: the paper adds blocks to res3 and res4 of a ResNet-50 (Kinetics, Table 2b-c: 1 block before the
last residual block of res4; 5 blocks, 2 to res3 and 3 to res4, every other block; 10 blocks, every block of
res3 and res4; COCO: 1 block before the last block of res4). No single ablate position is that; the default is
`stage` on every stage but the last (after res2, res3 and res4), the nearest per-stage placement, which keeps
res5 free as the paper found res5 the weakest single site (Table 2b). The paper's 5-block layout on a ResNet is
`position: block_out, stages: [2, 3], every: 2`; its 10-block one `position: block_out, stages: [2, 3]`.
"""
import torch
import torch.nn.functional as F
from timm.layers import NonLocalAttn

SUB_SAMPLE = ("input", "projections", "none")


class NonLocalBlock(NonLocalAttn):
    def __init__(self, channels: int, reduction: int = 2, sub_sample: str = "input", scale: bool = False):
        if sub_sample not in SUB_SAMPLE:
            raise ValueError(f"non_local sub_sample must be one of {', '.join(SUB_SAMPLE)}, got {sub_sample!r}")
        inner = channels // reduction
        if inner < 1:
            raise ValueError(f"non_local needs channels // reduction >= 1, got {channels} // {reduction}")
        super().__init__(channels, rd_channels=inner)  # t (theta), p (phi), g, z (W_z), norm: the official order
        self.sub_sample = sub_sample
        self.scale = inner ** -0.5 if scale else 1.0

    def forward(self, x):
        b, _, h, w = x.shape
        pool = self.sub_sample != "none" and h >= 2 and w >= 2
        theta = self.t(x).flatten(2)  # (B, C', HW)
        source = F.max_pool2d(x, 2) if pool and self.sub_sample == "input" else x
        phi, g = self.p(source), self.g(source)
        if pool and self.sub_sample == "projections":
            phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
        attn = torch.softmax(theta.transpose(1, 2) @ phi.flatten(2) * self.scale, dim=-1)  # (B, HW, HW')
        y = (g.flatten(2) @ attn.transpose(1, 2)).reshape(b, -1, h, w)  # (B, C', H, W)
        return self.norm(self.z(y)) + x
