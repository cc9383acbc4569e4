"""GCT (Yang, Zhu, Wu, Yang, Gated Channel Transformation for Visual Recognition, CVPR 2020, arXiv:1909.11519):
global context embedding, channel normalisation, tanh gating with an identity term.

Embedding       s_c = alpha_c * sqrt(sum_hw x_c^2 + eps)                      (mode l2, the paper's default)
                s_c = alpha_c * sum_hw |x_c|                                    (mode l1, the paper's ablation)
Normalisation   s^_c = sqrt(C) s_c / sqrt(sum_c s_c^2 + C eps) = s_c / sqrt(mean_c s_c^2 + eps)   (l2)
                s^_c = s_c / (mean_c |s_c| + eps)                               (l1)
Gating          x^ = x * (1 + tanh(gamma_c s^_c + beta_c)), eps = 1e-5
3C parameters (alpha, gamma, beta). Init as the paper and the official code: alpha 1, gamma 0, beta 0, so the
module starts as the identity. The paper writes the normalisation as sqrt(C) s_c / ||s||_2; the eps placement above
is the official code's (PyTorch/GCT.py, and the same in its TensorFlow builder), the only one that is released.
The official `after_relu` flag only skips |x| in l1 mode for non-negative inputs, where it changes nothing: not a
knob.

Placement: the paper applies GCT before every convolutional layer (the official README: "apply GCT for
every Conv layers ... as the default setting in our paper"), which no single ablate position is; the README's
lighter variant is one GCT per residual block (0.1-0.2% lower). ablate's default is one per residual block in
the block's attention slot (`block`, where SE sits, on the residual branch as the authors' GCTs are); GCT before
the second and third conv of each bottleneck is `position: pattern` with `pattern: "*.act[12]"`.
"""
import torch
from torch import nn


class GatedChannelTransform(nn.Module):
    def __init__(self, channels: int, mode: str = "l2"):
        super().__init__()
        if mode not in ("l1", "l2"):
            raise ValueError(f"gct mode must be l1 or l2, got {mode!r}")
        self.mode = mode
        self.eps = 1e-5
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        if self.mode == "l2":
            embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt() * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()
        else:
            embedding = x.abs().sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (embedding.abs().mean(dim=1, keepdim=True) + self.eps)
        return x * (1.0 + torch.tanh(embedding * norm + self.beta))
