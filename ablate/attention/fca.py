"""FcaNet's multi-spectral channel attention (Qin, Zhang, Wu, Li, FcaNet: Frequency Channel Attention
Networks, ICCV 2021, arXiv:2012.11879).

SE with its global average pooling generalised: GAP is the lowest (0, 0) frequency of a 2D DCT, so FcaNet
splits the C channels into n parts and pools part i with the DCT basis of frequency (u_i, v_i):
  Freq_i = sum_{h,w} X^i[:, h, w] B(u_i, h) B(v_i, w),  B(u, t) = cos(pi u (t + 1/2) / N) / sqrt(N)
  (times sqrt 2 when u > 0, the orthonormal DCT-II);  att = sigmoid(fc(Freq)), fc = C -> C/r -> C (no bias);
  Y = X * att.
Defaults (the paper's): r = 16 and `top16`, the 16 frequencies the paper ranks best one at a time on
ImageNet (the official get_freq_indices ranking; `freq_sel` offers the official code's top/low/bot 1-32
sets). The DCT filter is a fixed buffer (the paper's and official code's default; not learned).

Feature sizes, as the official layer: the frequencies live in a 7x7 space; the filter is built at
`dct_size` (frequencies scaled by dct_size // 7) and a feature map of another size is adaptive-average
pooled to dct_size x dct_size first. The official ImageNet ResNets build each stage's filter at its 224-px
feature size (56, 28, 14, 7), so pooling never runs there; here one dct_size serves every stage (default
7), as the official layer does for detection and other input sizes. Deviation, only where the official
code asserts: channels not divisible by the number of frequencies are split as evenly as possible (the
first C mod n parts one channel wider).

Placement: `block`, after the bottleneck's last BN before the residual add, where SE sits: the paper builds
FcaNet as SENet with GAP replaced by multi-spectral pooling, and the official model/fcanet.py FcaBottleneck
applies `self.att` right after bn3. The paper's ImageNet comparison table lists FcaNet-50 at 28.07M
parameters: SE-ResNet-50's count without the FC biases.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

_TOP = ([0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1],
        [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3])
_LOW = ([0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4],
        [0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3])
_BOT = ([6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6],
        [6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3])
# the official get_freq_indices: 7x7 frequency indices ranked by single-frequency ImageNet accuracy (top),
# lowest first (low), worst first (bot)
FREQ_TABLES = {"top": _TOP, "low": _LOW, "bot": _BOT}
FREQ_METHODS = tuple(f"{kind}{n}" for kind in FREQ_TABLES for n in (1, 2, 4, 8, 16, 32))


def dct_basis(freq: int, size: int) -> torch.Tensor:
    """B(freq, t) for t < size, the orthonormal DCT-II basis (float64)."""
    t = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * freq * (t + 0.5) / size) / math.sqrt(size)
    return basis * math.sqrt(2) if freq else basis


def dct_filter(channels: int, size: int, freqs: list[tuple[int, int]]) -> torch.Tensor:
    """(C, size, size): channel part i holds the 2D basis of freqs[i] (parts as even as torch.tensor_split)."""
    weight = torch.zeros(channels, size, size, dtype=torch.float64)
    parts = torch.arange(channels).tensor_split(len(freqs))
    for (u, v), idx in zip(freqs, parts):
        weight[idx] = torch.outer(dct_basis(u, size), dct_basis(v, size))
    return weight.float()


class FrequencyChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, freq_sel: str = "top16", dct_size: int = 7):
        super().__init__()
        if freq_sel not in FREQ_METHODS:
            raise ValueError(f"fca: freq_sel must be one of {', '.join(FREQ_METHODS)}, not {freq_sel!r}")
        if dct_size < 7:
            raise ValueError(f"fca: dct_size={dct_size} must be at least 7 (the 7x7 frequency space)")
        xs, ys = FREQ_TABLES[freq_sel[:3]]
        n, scale = int(freq_sel[3:]), dct_size // 7  # official: (2, 2) at 14x14 is (1, 1) at 7x7
        self.dct_size = dct_size
        # a buffer before the excitation, as the official layer's dct_layer.weight: state_dict order matches
        self.register_buffer("dct", dct_filter(channels, dct_size, [(u * scale, v * scale)
                                                                    for u, v in zip(xs[:n], ys[:n])]))
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x
        if x.shape[-2:] != (self.dct_size, self.dct_size):
            pooled = F.adaptive_avg_pool2d(x, self.dct_size)
        att = self.fc((pooled * self.dct).sum((2, 3)))
        return x * att[..., None, None]
