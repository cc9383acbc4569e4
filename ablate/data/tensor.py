"""The in-memory path: small datasets live as uint8 (N, C, H, W) tensors, so a batch is one indexing op (no
per-sample Python), and augmentation (random crop, hflip) and normalisation run batched on the device after
Lightning moves the uint8 batch there; so do the evaluated input's resize and centre crop (data.test_size,
data.crop_pct). Only `auto_augment` runs per sample: it is timm's PIL implementation (same
semantics and spec strings as the imagefolder path), applied inside the DataLoader so `num_workers` parallelises it.
`x_train` and `x_val` are the dataset's own splits as data.train_size / val_size chose them; a data.holdout is a set
of rows of `x_train`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

from ablate.config import DataBase
from ablate.data.base import DataModule, DataSplit, content_digest, holdout_split, split_name, timm_auto_augment


class TensorBatchDataset(Dataset):
    """(x, y) uint8 tensors; `__getitems__` lets the DataLoader fetch a whole batch with one indexing op."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, auto_augment=None):
        self.x, self.y, self.auto_augment = x, y, auto_augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = to_device(torch.as_tensor(indices), self.x.device)  # a CPU index would be copied there blocking
        x, y = self.x[idx], self.y[idx]
        if self.auto_augment is not None:
            x = torch.stack([pil_to_tensor(self.auto_augment(to_pil_image(img))) for img in x])
        return x, y


def _keep_batch(batch):
    # the dataset already returns a batch; module-level so worker processes can pickle it
    return batch


class TensorDataModule(DataModule):
    """Shared path for in-memory uint8 datasets: batched fetch, on-device crop/flip/resize/normalise."""

    crop_padding = 0.125  # random-crop padding as a fraction of the side (CIFAR's classic 4 px at 32)
    made_by = "ablate.data"  # what makes the tensors (each dataset names its own); `data_folder`: read from one
    data_folder: str | None = None

    def __init__(self, cfg: DataBase, x_train, y_train, x_val, y_val, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train.long(), x_val, y_val.long()
        self.num_classes = int(num_classes)
        self.in_chans = int(x_train.shape[1])
        self.image_size = int(cfg.image_size)
        self.test_size = int(cfg.test_size or cfg.image_size)
        self.classes = [str(c) for c in range(self.num_classes)]
        self.mean, self.std = channel_stats(x_train)
        self.auto_augment = timm_auto_augment(cfg.auto_augment, x_train.shape[-1], self.mean.tolist())
        self.seed_order()  # data.seed's order until build_datamodule gives the trial's train.seed
        # the training split's rows trained on and those held out to select on (data.holdout; None: no holdout)
        self.holdout = holdout_split(self.y_train, cfg.holdout, cfg.seed)

    def setup(self, stage: str) -> None:
        """On an accelerator the tensors move there once (data.on_device): a batch is then an index into device
        memory, with no host-to-device copy per step. Per-sample auto-augment (PIL) and loader workers need them
        on the host."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cpu" and self.cfg.on_device and self.auto_augment is None and not self.cfg.num_workers:
            self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)
            self.x_val, self.y_val = self.x_val.to(device), self.y_val.to(device)

    def train_dataloader(self):
        data = TensorBatchDataset(*self._training_rows(held=False), self.auto_augment)
        batches = self.shuffled_batches(data)  # a fresh loader replays the same shuffle and augmentation streams
        return self._loader(data, batch_sampler=batches, generator=batches.sampler.generator)

    def val_dataloader(self):
        """What selection sees (val/*): the holdout carved out of the training split, else the val split."""
        x, y = (self.x_val, self.y_val) if self.holdout is None else self._training_rows(held=True)
        return self._loader(self.shard(TensorBatchDataset(x, y)), batch_size=self.cfg.batch_size // self._rank()[1])

    def reported_dataloader(self):
        return self._loader(TensorBatchDataset(self.x_val, self.y_val), batch_size=self.cfg.batch_size)

    def splits(self) -> list[DataSplit]:
        """Each split's digest is over its uint8 images and labels as they sit in memory: data.seed, a holdout,
        a subset size or clutter that changes one image changes it."""
        parts = [("training", "train", self._training_rows(held=False))]
        if self.holdout is None:
            parts.append(("validation", "val", (self.x_val, self.y_val)))
        else:  # selection sees the holdout; the dataset's own val split is the reported test/*
            parts += [("validation", "holdout", self._training_rows(held=True)),
                      ("testing", "val", (self.x_val, self.y_val))]
        return [DataSplit(context, split_name(self.cfg, split), content_digest(x, y), len(y), self.data_folder,
                          None if self.data_folder else self.made_by) for context, split, (x, y) in parts]

    def _training_rows(self, held: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's images and labels trained on, or (`held`) held out to select on."""
        if self.holdout is None:
            return self.x_train, self.y_train
        rows = (self.holdout.held if held else self.holdout.train).to(self.x_train.device)
        return self.x_train[rows], self.y_train[rows]

    def _loader(self, data, **kwargs):
        workers = self.cfg.num_workers
        return DataLoader(data, collate_fn=_keep_batch, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def transform_batch(self, batch, train: bool):
        x, y = batch
        if train:
            x = self._crop_flip(x)
        x = x.float().div_(255)
        x = resized(x, self.image_size) if train else evaluated_view(x, self.test_size, self.cfg.crop_pct)
        mean, std = self._stats(x.device)
        return (x - mean) / std, y

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        # random parameters come from our own CPU generator, so they do not depend on the device or global RNG
        b, _, h, w = x.shape
        pad = round(self.crop_padding * h)
        if pad:
            off = to_device(torch.randint(0, 2 * pad + 1, (2, b), generator=self._aug_gen), x.device)
            x = F.pad(x, (pad, pad, pad, pad))
            rows = off[0, :, None] + torch.arange(h, device=x.device)
            cols = off[1, :, None] + torch.arange(w, device=x.device)
            # one gather crops every image at its own offset: result is (b, h, w, c)
            x = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2)
        if self.cfg.hflip:
            flip = to_device(torch.rand(b, generator=self._aug_gen) < self.cfg.hflip, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous()


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] at side `size`: bilinear, antialiased (as torchvision resizes tensors)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def evaluated_view(x: torch.Tensor, size: int, crop_pct: float | None) -> torch.Tensor:
    """What validation feeds the model (data.test_size, data.crop_pct): with a crop ratio, timm's eval transform
    batched on the device (resize the shorter side to floor(size / crop_pct), bilinear, then centre-crop `size`, by
    torchvision's own functions); without one, the whole image resized to `size`."""
    if crop_pct is None:
        return resized(x, size)
    x = TF.resize(x, [math.floor(size / crop_pct)], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(x, [size])


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std in [0, 1] units, exact and cheap from a histogram: uint8 has only 256 values."""
    counts = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])
    counts = counts.double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    std = ((counts * values.square()).sum(1) / n - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices, augmentation draws) on the device without the host waiting: from pinned memory,
    non-blocking, on CUDA (a pageable copy would synchronise every step)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)
