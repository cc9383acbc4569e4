"""Datamodules, one per data config class: the DATASETS table at the end of this file.

Every datamodule keeps the contract of `DataModule` (below): train and study build it from the data config,
a dry run asks only its `shape`, a study runs its `check` before any trial, Grad-CAM undoes its normalisation
with its `mean`/`std`. Adding a dataset is a config class in ablate/config/data.py (its name, keys and defaults)
and its datamodule in the table.

Small datasets (digits, cluttered-digits, synthetic, cifar10/100) live in memory as uint8 (N, C, H, W)
tensors, so a batch is one indexing op (no per-sample Python) and augmentation (random crop, hflip) and
normalisation run batched on the device after Lightning moves the uint8 batch there. Only `auto_augment` runs
per sample: it is timm's PIL implementation (same semantics and spec strings as the imagefolder path), applied
inside the DataLoader so `num_workers` parallelises it. `imagefolder` is torchvision's ImageFolder with timm's
transforms.

A datamodule's state (its shuffle and augmentation streams, and how far into the epoch training got) goes into
the trial's Lightning checkpoint, so a resumed trial draws the batches the uninterrupted one would have.
"""
from __future__ import annotations

import functools
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

from ablate.config import (Cifar10Data, Cifar100Data, ClutteredDigitsData, DataBase, DataConfig, DigitsData,
                           ImageFolderData, SyntheticData)
from ablate.errors import AblateError, one_line

__all__ = ["DATASETS", "DataModule", "build_datamodule", "check_data", "dataset_shape"]

# cluttered-digits geometry, as fractions of the canvas so image_size changes resolution, not the task
DIGIT_SIZE = (0.5, 0.625)  # digit side relative to the canvas: 16..20 px on 32 px (STN: 28 on 60)
FRAGMENT_SIZE = 0.094  # clutter fragment side relative to the canvas: 3 px on 32 px, a stroke, not a digit
CLUTTERED_SIZES = (4000, 1000)  # default train/val samples synthesised
SYNTHETIC_SIZES = (256, 64)


def build_datamodule(cfg: DataConfig) -> DataModule:
    return datamodule_class(cfg)(cfg)


def check_data(cfg: DataConfig) -> None:
    """What can be checked without loading anything (a dataset folder is there): before a study starts."""
    datamodule_class(cfg).check(cfg)


def dataset_shape(cfg: DataConfig) -> tuple[int, int]:
    """(num_classes, in_chans) without loading anything: what a dry run needs to build the model."""
    return datamodule_class(cfg).shape(cfg)


def datamodule_class(cfg: DataConfig) -> type[DataModule]:
    if type(cfg) not in DATASETS:  # every class in config.DATA_CONFIGS has one (tested); this guards others
        raise AblateError(f"data.name: {cfg.name!r} has no datamodule (the table ablate.data.DATASETS has "
                          f"{', '.join(c.__name__ for c in DATASETS)})")
    return DATASETS[type(cfg)]


class DataModule(pl.LightningDataModule):
    """What every datamodule provides.

    Instances: `num_classes`, `in_chans`, `image_size`; `mean` and `std`, the per-channel normalisation in
    [0, 1] units (so an input can be shown as an image again); `classes`, one name per class; the dataloaders;
    `transform_batch(batch, train=...)`, which Lightning applies to each batch once it is on the device
    (outside a Trainer, in plain loops and tests, call it on each batch yourself).
    Classes: `shape(cfg)` and `check(cfg)`, which load nothing, so dry runs and study checks stay cheap.
    """

    num_classes: int
    in_chans: int
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        """(num_classes, in_chans) for `cfg`: what a dry run needs to build the model."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: DataConfig) -> None:
        """Raise AblateError for what is wrong without loading anything (a missing folder, a subset larger than
        the dataset, an auto-augment spec timm does not parse); subclasses add their own checks to these."""
        _auto_augment(cfg.auto_augment, cfg.image_size, [0.5])
        for key, n, available in zip(("train_size", "val_size"), (cfg.train_size, cfg.val_size),
                                     cls.split_sizes(cfg) or (None, None)):
            if n is not None and available is not None and n > available:
                raise AblateError(f"data.{key}: {n} is more than the {available} samples available "
                                  f"(use at most {available}, or null for all)")

    @classmethod
    def split_sizes(cls, cfg: DataConfig) -> tuple[int, int] | None:
        """(train, val) samples of a dataset of fixed size; None where they are synthesised or counted on load."""
        return None

    def transform_batch(self, batch, train: bool):
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # runs on the already-moved batch; the trainer says whether this is a training step
        return self.transform_batch(batch, train=self.trainer is not None and self.trainer.training)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std shaped (C, 1, 1) on `device`, copied there once rather than every step."""
        if getattr(self, "_device_stats", (None,))[0] != device:
            self._device_stats = device, self.mean.to(device)[:, None, None], self.std.to(device)[:, None, None]
        return self._device_stats[1:]

    # ---- the training order, resumable: what a trial's checkpoint holds of the data
    _resume: dict | None = None  # a checkpoint's state, applied when the next training loader is built

    def shuffled_batches(self, data: Dataset) -> ResumableBatchSampler:
        """The training batches in a shuffled order drawn from data.seed (a fresh loader replays the same order),
        or where a restored checkpoint left off."""
        rank, ranks = self._rank()
        self._shuffle = torch.Generator().manual_seed(self.cfg.seed + 1)  # the same order on every rank
        if ranks > 1 and len(data) < self.cfg.batch_size:  # every rank must get the same number of batches
            raise AblateError(f"data.batch_size: {self.cfg.batch_size} is more than the {len(data)} training samples "
                              f"of a trial on {ranks} devices")
        self._batches = ResumableBatchSampler(RandomSampler(data, generator=self._shuffle), self.cfg.batch_size,
                                              drop_last=len(data) >= self.cfg.batch_size, rank=rank, ranks=ranks)
        # each rank crops and flips its own images with its own stream
        self._aug_gen = torch.Generator().manual_seed(self.cfg.seed + 2 + 7919 * rank)
        resume, self._resume = self._resume, None
        if resume is not None:
            self._aug_gen.set_state(resume["augment"])
            if resume["skip"]:  # stopped mid-epoch: that epoch's order again, less the batches trained on
                self._batches.resume_at = resume["order"], resume["skip"]
            else:  # stopped at an epoch's end: the next epoch's order
                self._shuffle.set_state(resume["order"])
        return self._batches

    def state_dict(self) -> dict:
        """Lightning calls this when it writes the trial's checkpoint."""
        trainer = self.trainer
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # training batches this epoch
        at_end = trained >= trainer.num_training_batches or self._batches.epoch_order is None
        return {"order": self._shuffle.get_state() if at_end else self._batches.epoch_order,
                "skip": 0 if at_end else trained, "augment": self._aug_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state  # Lightning restores the datamodule before it asks for the loaders

    def _rank(self) -> tuple[int, int]:
        """(this rank, ranks) of a multi-device trial; (0, 1) outside one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def shard(self, data: Dataset) -> Dataset:
        """This rank's share of the validation set: every N-th sample (the metrics gather all ranks' samples)."""
        rank, ranks = self._rank()
        return data if ranks == 1 else Subset(data, range(rank, len(data), ranks))


class ResumableBatchSampler(BatchSampler):
    """Batches of a shuffled sampler that can restart part-way into an epoch: it remembers the state its
    generator drew the epoch's order from, and a restored one draws that order again and skips the batches
    already trained on, without loading them. On several devices each rank takes its slice of every batch (the
    batch size is the whole step's), so the order and the batch count are the same on every rank."""

    def __init__(self, sampler: RandomSampler, batch_size: int, drop_last: bool, rank: int = 0, ranks: int = 1):
        super().__init__(sampler, batch_size, drop_last or ranks > 1)
        self.rank, self.ranks = rank, ranks
        self.epoch_order: torch.Tensor | None = None  # the generator's state this epoch's order was drawn from
        self.resume_at: tuple[torch.Tensor, int] | None = None  # (that state, batches to skip), used once

    def __iter__(self):
        generator, skip = self.sampler.generator, 0
        if self.resume_at is not None:
            (order, skip), self.resume_at = self.resume_at, None
            generator.set_state(order)
        self.epoch_order = generator.get_state()  # the DataLoader's own draw (its base seed) is already made
        batches = itertools.islice(super().__iter__(), skip, None)
        if self.ranks == 1:
            return batches
        share = self.batch_size // self.ranks
        return (batch[self.rank * share:(self.rank + 1) * share] for batch in batches)


# ---------------------------------------------------------------- in-memory tensor datasets

class TensorBatchDataset(Dataset):
    """(x, y) uint8 tensors; `__getitems__` lets the DataLoader fetch a whole batch with one indexing op."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, auto_augment=None):
        self.x, self.y, self.auto_augment = x, y, auto_augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
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

    def __init__(self, cfg: DataConfig, x_train, y_train, x_val, y_val, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train.long(), x_val, y_val.long()
        self.num_classes = int(num_classes)
        self.in_chans = int(x_train.shape[1])
        self.image_size = int(cfg.image_size)
        self.classes = [str(c) for c in range(self.num_classes)]
        self.mean, self.std = _channel_stats(x_train)
        self.auto_augment = _auto_augment(cfg.auto_augment, x_train.shape[-1], self.mean.tolist())
        self._aug_gen = torch.Generator().manual_seed(cfg.seed + 2)

    def setup(self, stage: str) -> None:
        """On an accelerator the tensors move there once (data.on_device): a batch is then an index into device
        memory, with no host-to-device copy per step. Per-sample auto-augment (PIL) and loader workers need them
        on the host."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cpu" and self.cfg.on_device and self.auto_augment is None and not self.cfg.num_workers:
            self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)
            self.x_val, self.y_val = self.x_val.to(device), self.y_val.to(device)

    def train_dataloader(self):
        data = TensorBatchDataset(self.x_train, self.y_train, self.auto_augment)
        batches = self.shuffled_batches(data)  # a fresh loader replays the same shuffle and augmentation streams
        return self._loader(data, batch_sampler=batches, generator=batches.sampler.generator)

    def val_dataloader(self):
        return self._loader(self.shard(TensorBatchDataset(self.x_val, self.y_val)),
                            batch_size=self.cfg.batch_size // self._rank()[1])

    def _loader(self, data, **kwargs):
        workers = self.cfg.num_workers
        return DataLoader(data, collate_fn=_keep_batch, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def transform_batch(self, batch, train: bool):
        x, y = batch
        if train:
            x = self._crop_flip(x)
        x = x.float().div_(255)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean, std = self._stats(x.device)
        return (x - mean) / std, y

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        # random parameters come from our own CPU generator, so they do not depend on the device or global RNG
        b, _, h, w = x.shape
        pad = round(self.crop_padding * h)
        if pad:
            off = torch.randint(0, 2 * pad + 1, (2, b), generator=self._aug_gen).to(x.device)
            x = F.pad(x, (pad, pad, pad, pad))
            rows = off[0, :, None] + torch.arange(h, device=x.device)
            cols = off[1, :, None] + torch.arange(w, device=x.device)
            # one gather crops every image at its own offset: result is (b, h, w, c)
            x = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2)
        if self.cfg.hflip:
            flip = (torch.rand(b, generator=self._aug_gen) < self.cfg.hflip).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous()


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std in [0, 1] units, exact and cheap from a histogram: uint8 has only 256 values."""
    counts = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])
    counts = counts.double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    std = ((counts * values.square()).sum(1) / n - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def _auto_augment(spec: str | None, size: int, mean: list[float]):
    """timm's PIL auto-augment for `spec` (dispatch as in timm.data.create_transform); None when unset."""
    if not spec:
        return None
    fill = tuple(min(255, round(255 * m)) for m in mean)  # PIL wants one fill value per channel
    hparams = dict(translate_const=int(size * 0.45), img_mean=fill)
    try:
        if spec.startswith("rand"):
            return rand_augment_transform(spec, hparams)
        if spec.startswith("augmix"):
            return augment_and_mix_transform(spec, dict(hparams, translate_pct=0.3))
        return auto_augment_transform(spec, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        raise AblateError(f"data.auto_augment: {spec!r} is not a timm auto-augment spec ({e}; e.g. "
                          "'rand-m9-mstd0.5' for RandAugment, 'original' for AutoAugment, "
                          "'augmix-m5-w4-d2')") from None


def _pick(available: int, n: int | None, key: str, gen: torch.Generator) -> torch.Tensor:
    """Sorted positions of a random n-subset (all when n is null); n beyond what exists is a config error."""
    if n is None:
        return torch.arange(available)
    if n > available:
        raise AblateError(f"data.{key}: {n} is more than the {available} samples available "
                          f"(use at most {available}, or null for all)")
    return torch.randperm(available, generator=gen)[:n].sort().values


# ---------------------------------------------------------------- digits

@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()  # 1797 real 8x8 digits shipped inside scikit-learn, values 0..16
    return torch.tensor(digits.images / 16.0, dtype=torch.float32), torch.tensor(digits.target)


def digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split of the 1797 source digits (sorted indices into load_digits), fixed by seed."""
    _, labels = _load_digits()
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in range(10):
        members = torch.nonzero(labels == c)[:, 0]
        members = members[torch.randperm(len(members), generator=gen)]
        cut = round(0.2 * len(members))
        val.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@functools.lru_cache(maxsize=2)
def _digit_bank(lo: int, hi: int) -> torch.Tensor:
    """Each bundled digit upscaled to every side lo..hi, padded to hi x hi: one gather picks (side, digit)."""
    images, _ = _load_digits()
    bank = torch.zeros(hi - lo + 1, len(images), hi, hi, dtype=torch.uint8)
    for i, s in enumerate(range(lo, hi + 1)):
        up = F.interpolate(images[:, None], size=(s, s), mode="bilinear", align_corners=False)
        bank[i, :, :s, :s] = _to_uint8(up[:, 0])
    return bank


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 digits, bilinearly upscaled to image_size.

    One channel (in_chans=1): timm models accept in_chans=1, and replicating grey to RGB would only triple the
    stem's input without adding information.
    """

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        return cfg.class_count, 1

    @classmethod
    def split_sizes(cls, cfg: DataConfig) -> tuple[int, int]:
        return tuple(len(s) for s in digits_split(cfg.seed))

    def __init__(self, cfg: DataConfig):
        images, labels = _load_digits()
        train, val = digits_split(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        train = train[_pick(len(train), cfg.train_size, "train_size", gen)]
        val = val[_pick(len(val), cfg.val_size, "val_size", gen)]
        size = (cfg.image_size, cfg.image_size)
        x = _to_uint8(F.interpolate(images[:, None], size=size, mode="bilinear", align_corners=False))
        super().__init__(cfg, x[train], labels[train], x[val], labels[val], num_classes=cfg.class_count)
        self.train_source, self.val_source = train, val


# ---------------------------------------------------------------- cluttered digits

class ClutteredDigitsDataModule(TensorDataModule):
    """Cluttered digits (Jaderberg et al. 2015, Spatial Transformer Networks) from the bundled digits.

    Each canvas holds one upscaled digit at a random position and `clutter` stroke-sized fragments of other
    digits (sizes: DIGIT_SIZE, FRAGMENT_SIZE), so a model has to find the digit first: what attention is for.
    The source digits are split before synthesis (`digits_split`), so train and val share no digit, not even
    in the clutter. Tests and attention maps read, per split, `*_source` (its source indices), `*_digit` (each
    canvas's digit), `*_clutter` (its fragments' digits) and `*_boxes` (y, x, side of the digit's square).
    """

    crop_padding = 0.0  # placement is already random; a crop could push the digit off the canvas

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        return cfg.class_count, 1

    def __init__(self, cfg: DataConfig):
        _, labels = _load_digits()
        self.train_source, self.val_source = digits_split(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        n_train, n_val = cfg.train_size or CLUTTERED_SIZES[0], cfg.val_size or CLUTTERED_SIZES[1]
        x_train, self.train_digit, self.train_clutter, self.train_boxes = synthesize_cluttered(
            self.train_source, n_train, cfg.image_size, cfg.clutter, gen)
        x_val, self.val_digit, self.val_clutter, self.val_boxes = synthesize_cluttered(
            self.val_source, n_val, cfg.image_size, cfg.clutter, gen)
        super().__init__(cfg, x_train, labels[self.train_digit], x_val, labels[self.val_digit],
                         num_classes=cfg.class_count)


def synthesize_cluttered(source: torch.Tensor, n: int, size: int, clutter: int, gen: torch.Generator):
    """n uint8 canvases (n, 1, size, size) from the bundled digits `source` (indices), vectorised over n.

    Returns (canvases, each canvas's digit, (n, clutter) fragment digits as source indices, (n, 3) y/x/side).
    """
    lo = max(2, round(DIGIT_SIZE[0] * size))
    hi = max(lo, round(DIGIT_SIZE[1] * size))
    sides = torch.arange(lo, hi + 1)
    bank = _digit_bank(lo, hi)[:, source]

    pick = torch.randint(len(source), (n,), generator=gen)
    which = torch.randint(len(sides), (n,), generator=gen)
    side = sides[which]
    y, x = (torch.rand(2, n, generator=gen) * (size - side + 1)).long()
    patches, ys, xs = [bank[which, pick]], [y], [x]

    frag = min(lo, max(1, round(FRAGMENT_SIZE * size)))
    ar = torch.arange(frag)
    other = torch.zeros(n, 0, dtype=torch.long)
    if clutter:
        # per fragment: another source digit (shifted index), a random frag x frag window of it, a random spot
        shift = torch.randint(1, max(2, len(source)), (n, clutter), generator=gen)
        other = (pick[:, None] + shift) % len(source)
        w = torch.randint(len(sides), (n, clutter), generator=gen)
        oy, ox = (torch.rand(2, n, clutter, generator=gen) * (sides[w] - frag + 1)).long()
        pieces = bank[w[..., None, None], other[..., None, None], (oy[..., None] + ar)[..., :, None],
                      (ox[..., None] + ar)[..., None, :]]
        py, px = (torch.rand(2, n, clutter, generator=gen) * (size - frag + 1)).long()
        patches.append(pieces)
        ys.append(py)
        xs.append(px)

    # one scatter with max-compositing for the digit and all fragments (overlaps resolve deterministically)
    # margin: the hi x hi digit patch is zero beyond its side, which ends inside the canvas
    width = size + hi - lo
    canvas = torch.zeros(n, width * width, dtype=torch.uint8)
    index = [((yy[..., None] + torch.arange(p.shape[-1]))[..., :, None] * width
              + (xx[..., None] + torch.arange(p.shape[-1]))[..., None, :]).reshape(n, -1)
             for p, yy, xx in zip(patches, ys, xs)]
    canvas.scatter_reduce_(1, torch.cat(index, 1), torch.cat([p.reshape(n, -1) for p in patches], 1), "amax")
    x_out = canvas.view(n, 1, width, width)[:, :, :size, :size].contiguous()
    return x_out, source[pick], source[other], torch.stack([y, x, side], 1)


# ---------------------------------------------------------------- synthetic

class SyntheticDataModule(TensorDataModule):
    """Random but learnable: each class is a fixed smooth random RGB template, a sample template + noise."""

    crop_padding = 0.0

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        return cfg.class_count, 3

    def __init__(self, cfg: DataConfig):
        gen = torch.Generator().manual_seed(cfg.seed)
        k, size = cfg.num_classes, cfg.image_size
        # smooth (4x4 upsampled) templates stay distinguishable after a backbone's downsampling
        templates = F.interpolate(torch.rand(k, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                                  align_corners=False)

        def make(n):
            y = torch.randint(k, (n,), generator=gen)
            return _to_uint8(0.7 * templates[y] + 0.3 * torch.rand(n, 3, size, size, generator=gen)), y

        x_train, y_train = make(cfg.train_size or SYNTHETIC_SIZES[0])
        x_val, y_val = make(cfg.val_size or SYNTHETIC_SIZES[1])
        super().__init__(cfg, x_train, y_train, x_val, y_val, num_classes=k)


# ---------------------------------------------------------------- CIFAR

class CifarDataModule(TensorDataModule):
    """CIFAR from data.root, read into uint8 tensors; resized on the device when image_size != 32."""

    source: type  # torchvision's class: the folder name, the batch file names and the download
    title: str
    label_key: str  # the labels' key in each pickled batch

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        return cfg.class_count, 3

    @classmethod
    def split_sizes(cls, cfg: DataConfig) -> tuple[int, int]:
        return 50000, 10000  # both CIFARs' train and test batches

    @classmethod
    def check(cls, cfg: DataConfig) -> None:
        super().check(cfg)
        cls.folder(cfg)

    @classmethod
    def folder(cls, cfg: DataConfig) -> tuple[Path, Path]:
        """(root, the dataset's folder under it), or a one-line error when it is missing and not to be
        downloaded."""
        base = cls.source.base_folder
        if cfg.root is None:
            raise AblateError(f"data.root: required for {cfg.name} (the folder that holds {base}, "
                              "or where to put it with data.download: true)")
        root = Path(cfg.root).expanduser()
        folder = root / base
        if not folder.is_dir() and not cfg.download:
            raise AblateError(f"data.root: {cls.title} not found under {root} (expected {folder}; put the "
                              "dataset there or set data.download: true)")
        return root, folder

    def __init__(self, cfg: DataConfig):
        root, folder = self.folder(cfg)
        if not folder.is_dir():  # folder() let it through: data.download is on
            self.source(str(root), train=True, download=True)  # torchvision fetches and checksums the archive
        # read the batch files ourselves, not through torchvision's dataset: its constructor MD5-checks all
        # 170 MB on every trial and calls any bad file "Dataset not found or corrupted"; ours names the file
        x_train, y_train = self._read(folder, self.source.train_list)
        x_val, y_val = self._read(folder, self.source.test_list)
        gen = torch.Generator().manual_seed(cfg.seed)
        train = _pick(len(y_train), cfg.train_size, "train_size", gen)
        val = _pick(len(y_val), cfg.val_size, "val_size", gen)
        super().__init__(cfg, x_train[train], y_train[train], x_val[val], y_val[val],
                         num_classes=cfg.class_count)

    @classmethod
    def _read(cls, folder: Path, files: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, 32, 32) uint8 and labels from the batch files (torchvision's (name, md5) list)."""
        xs, ys = [], []
        for name, _md5 in files:
            path = folder / name
            if not path.is_file():
                raise AblateError(f"data.root: {path} is missing (an incomplete {cls.title} folder; replace "
                                  "it or remove it and set data.download: true)")
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                xs.append(torch.from_numpy(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)))
                ys.append(torch.as_tensor(entry[cls.label_key], dtype=torch.long))
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
                raise AblateError(f"data.root: {path} is not a {cls.title} batch file "
                                  f"({type(e).__name__}: {e})") from None
        return torch.cat(xs), torch.cat(ys)


class Cifar10DataModule(CifarDataModule):
    source, title, label_key = CIFAR10, "CIFAR-10", "labels"


class Cifar100DataModule(CifarDataModule):
    source, title, label_key = CIFAR100, "CIFAR-100", "fine_labels"


# ---------------------------------------------------------------- image folders

class ImageFolderDataModule(DataModule):
    """ImageNet layout root/train/<class>/* and root/val/<class>/*, read by ImageFolder, timm transforms."""

    @classmethod
    def shape(cls, cfg: DataConfig) -> tuple[int, int]:
        return cfg.num_classes, 3  # data.num_classes: the folders may not be on this machine (a dry run)

    @classmethod
    def check(cls, cfg: DataConfig) -> None:
        super().check(cfg)
        _imagefolder_root(cfg)

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        root = _imagefolder_root(cfg)
        # the same one-line error for a bad spec as the tensor datasets give
        _auto_augment(cfg.auto_augment, cfg.image_size, [0.5])
        # data.on_device, timm's prefetcher convention: workers decode and augment to uint8 (a quarter of the
        # bytes of float32 through pinned memory), the float conversion and normalisation run on the device
        uint8 = cfg.on_device
        train_tf = create_transform(cfg.image_size, is_training=True, auto_augment=cfg.auto_augment,
                                    hflip=cfg.hflip, use_prefetcher=uint8)
        val_tf = create_transform(cfg.image_size, is_training=False, use_prefetcher=uint8)
        try:
            train, val = ImageFolder(str(root / "train"), train_tf), ImageFolder(str(root / "val"), val_tf)
        except FileNotFoundError as e:
            raise AblateError(f"data.root: {one_line(e)} (expected {IMAGEFOLDER_LAYOUT})") from None
        if train.classes != val.classes:
            missing = sorted(set(train.classes) ^ set(val.classes))[:5]
            raise AblateError(f"data.root: {root}/train and {root}/val have different class folders "
                              f"(e.g. {', '.join(missing)}); both need the same <class> names")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.train_set = _subset(train, _pick(len(train), cfg.train_size, "train_size", gen))
        self.val_set = _subset(val, _pick(len(val), cfg.val_size, "val_size", gen))
        self.classes = train.classes
        self.num_classes, self.in_chans, self.image_size = len(train.classes), 3, int(cfg.image_size)
        # what timm's create_transform normalises with
        self.mean, self.std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)

    def transform_batch(self, batch, train: bool):
        x, y = batch
        if x.dtype != torch.uint8:  # data.on_device: false, timm's float transforms normalised it already
            return x, y
        mean, std = self._stats(x.device)
        return x.float().div_(255).sub_(mean).div_(std), y  # what timm's ToTensor + Normalize compute

    def train_dataloader(self):
        batches = self.shuffled_batches(self.train_set)
        return self._loader(self.train_set, batch_sampler=batches, generator=batches.sampler.generator)

    def val_dataloader(self):
        return self._loader(self.shard(self.val_set), batch_size=self.cfg.batch_size // self._rank()[1])

    def _loader(self, data, **kwargs):
        workers = self.cfg.num_workers
        return DataLoader(data, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)


IMAGEFOLDER_LAYOUT = "root/train/<class>/*.jpg and root/val/<class>/*"


def _imagefolder_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise AblateError(f"data.root: required for imagefolder (a folder laid out as {IMAGEFOLDER_LAYOUT})")
    root = Path(cfg.root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            expected = IMAGEFOLDER_LAYOUT.replace("root", str(root))
            raise AblateError(f"data.root: {root / split} not found (imagefolder expects {expected})")
    return root


def _subset(data: Dataset, positions: torch.Tensor) -> Dataset:
    return data if len(positions) == len(data) else Subset(data, positions.tolist())


# ---------------------------------------------------------------- the table

DATASETS: dict[type[DataBase], type[DataModule]] = {
    DigitsData: DigitsDataModule,
    ClutteredDigitsData: ClutteredDigitsDataModule,
    SyntheticData: SyntheticDataModule,
    Cifar10Data: Cifar10DataModule,
    Cifar100Data: Cifar100DataModule,
    ImageFolderData: ImageFolderDataModule,
}
