"""Synthetic images, random but learnable: each class a fixed smooth random RGB template, a sample template + noise."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.config import SyntheticData
from ablate.data.tensor import TensorDataModule, to_uint8

SYNTHETIC_SIZES = (256, 64)  # default train/val samples synthesised


class SyntheticDataModule(TensorDataModule):
    """Random but learnable: each class is a fixed smooth random RGB template, a sample template + noise."""

    crop_padding = 0.0
    made_by = "ablate.data.synthetic"

    @classmethod
    def shape(cls, cfg: SyntheticData) -> tuple[int, int]:
        return cfg.class_count, 3

    def __init__(self, cfg: SyntheticData):
        gen = torch.Generator().manual_seed(cfg.seed)
        k, size = cfg.num_classes, cfg.image_size
        # smooth (4x4 upsampled) templates stay distinguishable after a backbone's downsampling
        templates = F.interpolate(torch.rand(k, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                                  align_corners=False)

        def make(n):
            y = torch.randint(k, (n,), generator=gen)
            return to_uint8(0.7 * templates[y] + 0.3 * torch.rand(n, 3, size, size, generator=gen)), y

        x_train, y_train = make(cfg.train_size or SYNTHETIC_SIZES[0])
        x_val, y_val = make(cfg.val_size or SYNTHETIC_SIZES[1])
        super().__init__(cfg, x_train, y_train, x_val, y_val, num_classes=k)
