"""SimAM (Yang et al., ICML 2021): a parameter-free 3-D gate from each neuron's minimal energy.

Per channel, with mu and sigma^2 = sum (x - mu)^2 / (M - 1) over its M = H * W positions,
1 / e* = (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2 and y = x * sigmoid(1 / e*); lambda = 1e-4.
Deviation: M - 1 is floored at 1, so a 1 x 1 map gives sigmoid(1/2) instead of the official NaN.
Not in timm.
"""
import torch
from torch import nn


class SimAM(nn.Module):
    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        inv_energy = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * inv_energy.sigmoid()
