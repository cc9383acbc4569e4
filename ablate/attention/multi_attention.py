"""The Multi-Attention classifier head (innat/Multi-Attention, Keras): CBAM + DeepMoji pooling + an MLP tail.

On backbone features x (B, C, H, W), composed from the registry's own modules:
  canx   = x * M_c(x)                          cbam.ChannelGate
  gapx   = GAP(canx * M_s1(canx))              cbam.SpatialGate (CBAM order: channel then spatial)
  wvgx   = GAP(M_s2(canx))                     a second cbam.SpatialGate on canx (see `second_spatial`)
  gapavg = (gapx + wvgx) / 2                   Keras Average()
  awgavg = DeepMoji attention-weighted average of x   attn_pool.AttentionWeightedAverage
  out    = Dropout(ReLU(Linear(BatchNorm1d(gapavg + awgavg))))   (B, hidden)
The model's classifier then maps `out_features` = hidden to the classes (the injector swaps it in).

`second_spatial`: in the Keras code SpatialAttentionModule returns the sigmoid map (B, H, W, 1)
(`spnx = SPN1(canx) * canx`), so `GAP2(SPN2(canx))` pools the map itself: one scalar per image, which
Keras' Average broadcasts over the C channels ("a weighting term to the GAP", as the README says).
`map` (default) is that; `features` pools the re-weighted features GAP(canx * M_s2(canx)) instead.
Departures from the Keras code, by design: the gates are CBAM's (paper defaults r=16, one k x k conv),
where the Keras modules use r=8, a ReLU before the channel sigmoid and a 64-32-16-1 stack of 3x3 convs.
"""
import torch
from torch import nn

from ablate.attention.attn_pool import AttentionWeightedAverage
from ablate.attention.cbam import ChannelGate, SpatialGate


class MultiAttentionHead(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, hidden: int = 512,
                 dropout: float = 0.5, second_spatial: str = "map"):
        super().__init__()
        self.out_features = hidden  # the injector gives the model a classifier of this width
        self.second_spatial = second_spatial
        self.channel = ChannelGate(channels, reduction)
        self.spatial1 = SpatialGate(channels, kernel_size)
        self.spatial2 = SpatialGate(channels, kernel_size)
        self.awg = AttentionWeightedAverage(channels)
        self.norm = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C): the sum of the two attention poolings, before the tail."""
        canx = x * self.channel.gate(x)
        gapx = (canx * self.spatial1.gate(canx)).mean((2, 3))
        map2 = self.spatial2.gate(canx)
        wvgx = map2.mean((1, 2, 3))[:, None] if self.second_spatial == "map" else (canx * map2).mean((2, 3))
        gapavg = (gapx + wvgx) / 2
        return gapavg + self.awg.pool(x, self.awg.attention(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc(self.norm(self.pooled(x)))))
