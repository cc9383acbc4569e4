"""SRM (Lee, Kim, Nam, SRM: A Style-based Recalibration Module for Convolutional Neural Networks, ICCV 2019,
arXiv:1903.10829): style pooling, a channel-wise fully connected layer, BatchNorm, sigmoid, scale.

Style pooling   t_c = (mu_c, sigma_c), mu_c = 1/HW sum x_c, sigma_c = sqrt(1/HW sum (x_c - mu_c)^2 + eps), eps 1e-5
Integration     z_c = w_c . t_c (CFC: 2 weights per channel, no bias), g = sigmoid(BN(z))
Output          x * g
2C + 2C (BN) parameters per module: SRM-ResNet-50 has 25.62M parameters (the paper's ImageNet table, against
ResNet-50 25.56M and SE-ResNet-50 28.09M).

Knobs: `unbiased_std` divides the variance by HW - 1 instead of HW (the official code's torch.var; the paper's
eq. 2 divides by HW). With one spatial position the unbiased variance is undefined (nan), the paper's is 0.
Init as the official code: CFC weights 0, so every gate starts at sigmoid(BN bias) = 0.5.

Placement: inside each residual block after the last BatchNorm, before the residual addition, where SE sits
(the paper's SRM-ResNet, built like SE-ResNet; the official models/resnet.py applies `rclb` to bn3's output):
position `block`.
"""
import torch
from torch import nn


class StyleRecalibration(nn.Module):
    def __init__(self, channels: int, unbiased_std: bool = False):
        super().__init__()
        self.unbiased_std = unbiased_std
        self.eps = 1e-5
        self.cfc = nn.Parameter(torch.zeros(channels, 2))  # before bn: the official tensor order
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        flat = x.flatten(2)
        mean = flat.mean(dim=2)
        std = (flat.var(dim=2, unbiased=self.unbiased_std) + self.eps).sqrt()
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]  # (B, C): each channel's own 2 -> 1 fully connected
        return x * torch.sigmoid(self.bn(z[:, :, None, None]))
