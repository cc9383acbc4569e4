"""Lambda layer (Bello, LambdaNetworks: Modeling Long-Range Interactions Without Attention, ICLR 2021,
arXiv:2102.08602), replacing a bottleneck's 3x3 conv as in the paper's LambdaResNets.

For a context of m = H*W positions (Sec. 3, Fig. 3 pseudo-code), with |h| heads, key depth |k|, value depth
|v| = d_out / |h| and intra-depth |u| = 1:
    Q = BN(W_q X) (|h| |k| channels),  K = softmax over positions of W_k X (|k|),  V = BN(W_v X) (|v|)
    content lambda   lambda^c = K^T V                                  (|k| x |v|, shared by all positions)
    position lambda  lambda^p_n = sum_{m in n's r x r window} E_{n-m} V_m  (|k| x |v|; E a learned r x r x |k|
                     kernel: the "lambda convolution", a conv3d of V with kernel (r, r, 1))
    y_n = concat over heads of q_n^h (lambda^c + lambda^p_n)           (|h| |v| = d_out channels)
W_q, W_k, W_v are bias-free 1x1 projections. Stride 2 is a 2x2 average pool after the layer (as timm; ceil
mode, so an odd map gives ceil(n / 2) as the strided conv it replaces).
Defaults, as the lambda layer of the paper's ResNet-50 comparison with attention mechanisms (Sec. 5.1, the
table listing "Lambda layer" at 15.0M params, 78.4% top-1): |k| = 16, |h| = 4, |u| = 1, local contexts of
r = 23 (the lambda convolution) in every bottleneck's 3x3 conv; ResNet-50 so built has 15.00M parameters.

timm's LambdaLayer computes exactly this (|u| fixed at 1, as here); the adapter builds it with a bias-free
lambda convolution, as the paper's pseudo-code (timm's Conv3d adds a bias per key, which adds a constant
position lambda). |u| > 1 (the paper's "|u|=4" variants) is not provided.
The author released no runnable PyTorch code (the paper's appendix gives TensorFlow-style pseudo-code), so
tests/test_catalogue_mods3.py checks this module against an independent computation of the equations above.

Placement: the paper replaces the 3x3 convolutions of all ResNet-50 bottlenecks for its lambda-layer
comparisons (Sec. 5.1); `conv` on all stages (15.00M params, the paper's 15.0M). Needs as many output as
input channels (a ResNet's 3x3 conv) and heads dividing them; any feature size (the lambda convolution pads,
so small maps only see part of the r x r window).
"""
from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer
from torch import nn


class LambdaLayer(TimmLambdaLayer):
    def __init__(self, channels: int, out_channels: int, stride: int = 1, feat_size=None, heads: int = 4,
                 key_depth: int = 16, context: int = 23):
        if out_channels != channels:
            raise ValueError(f"lambda: needs as many output as input channels ({channels} -> {out_channels})")
        if out_channels % heads:
            raise ValueError(f"lambda: heads={heads} must divide the {out_channels} output channels")
        if stride not in (1, 2):
            raise ValueError(f"lambda: stride must be 1 or 2, got {stride}")
        super().__init__(channels, out_channels, stride=stride, num_heads=heads, dim_head=key_depth, r=context)
        # the paper's lambda convolution has no bias (timm's Conv3d does): same kernel, bias-free
        self.conv_lambda = nn.Conv3d(1, key_depth, (context, context, 1), padding=(context // 2, context // 2, 0),
                                     bias=False)
        if stride == 2:  # ceil_mode: an odd map halves to ceil(n / 2) as the strided 3x3 conv and the shortcut do
            self.pool = nn.AvgPool2d(2, 2, ceil_mode=True)
        self.reset_parameters()
