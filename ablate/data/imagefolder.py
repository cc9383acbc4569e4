"""Image folders in ImageNet's layout: torchvision's ImageFolder with timm's transforms, batches as uint8."""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.vision import StandardTransform

from ablate.config import ImageFolderData
from ablate.data.base import DataModule, DataSplit, holdout_split, pick, split_name, timm_auto_augment
from ablate.errors import AblateError, at, one_line, path_kind


class ImageFolderDataModule(DataModule):
    """ImageNet layout root/train/<class>/* and root/val/<class>/*, read by ImageFolder, timm transforms."""

    @classmethod
    def shape(cls, cfg: ImageFolderData) -> tuple[int, int]:
        return cfg.num_classes, 3  # data.num_classes: the folders may not be on this machine (a dry run)

    @classmethod
    def check(cls, cfg: ImageFolderData) -> None:
        super().check(cfg)
        _imagefolder_root(cfg)

    def __init__(self, cfg: ImageFolderData):
        super().__init__()
        self.cfg = cfg
        root = _imagefolder_root(cfg)
        # the same one-line error for a bad spec as the tensor datasets give
        timm_auto_augment(cfg.auto_augment, cfg.image_size, [0.5])
        # data.on_device, timm's prefetcher convention: workers decode and augment to uint8 (a quarter of the
        # bytes of float32 through pinned memory), the float conversion and normalisation run on the device
        uint8 = cfg.on_device
        train_tf = create_transform(cfg.image_size, is_training=True, auto_augment=cfg.auto_augment,
                                    hflip=cfg.hflip, use_prefetcher=uint8)
        # the evaluated input: data.test_size, resized to test_size / crop_pct and centre-cropped (null: timm's 0.875)
        self.test_size = int(cfg.test_size or cfg.image_size)
        val_tf = create_transform(self.test_size, is_training=False, crop_pct=cfg.crop_pct, use_prefetcher=uint8)
        try:
            train, val = ImageFolder(str(root / "train"), train_tf), ImageFolder(str(root / "val"), val_tf)
        except FileNotFoundError as e:
            raise AblateError(f"data.root: {one_line(e)} (expected {IMAGEFOLDER_LAYOUT})") from None
        if train.classes != val.classes:
            missing = sorted(set(train.classes) ^ set(val.classes))[:5]
            raise AblateError(f"data.root: {root}/train and {root}/val have different class folders "
                              f"(e.g. {', '.join(missing)}); both need the same <class> names")
        gen = torch.Generator().manual_seed(cfg.seed)
        chosen = pick(len(train), cfg.train_size, "train_size", gen)
        self.train_set = _subset(train, chosen)
        self.val_set = _subset(val, pick(len(val), cfg.val_size, "val_size", gen))  # the dataset's own val split
        self.selection_set = self.val_set  # what val/* measure
        holdout = holdout_split(torch.as_tensor(train.targets)[chosen], cfg.holdout, cfg.seed)
        if holdout is not None:  # the held-out images are read as validation images are (no augmentation)
            seen_as_val = copy.copy(train)
            seen_as_val.transform, seen_as_val.transforms = val_tf, StandardTransform(val_tf)
            self.train_set = Subset(train, chosen[holdout.train].tolist())
            self.selection_set = Subset(seen_as_val, chosen[holdout.held].tolist())
        self.seed_order()  # data.seed's order until build_datamodule gives the trial's train.seed
        self.root = root
        self.classes = train.classes
        self.num_classes, self.in_chans, self.image_size = len(train.classes), 3, int(cfg.image_size)
        # what timm's create_transform normalises with
        self.mean, self.std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)

    def splits(self) -> list[DataSplit]:
        """Each split's digest is over its files' names (with their class folder) and sizes, never the images: a
        file added, removed, replaced by one of another size, or another data.seed / holdout changes it."""
        parts = [("training", "train", self.train_set, "train")]
        if self.selection_set is self.val_set:
            parts.append(("validation", "val", self.val_set, "val"))
        else:  # selection sees the holdout carved out of train/; val/ is the reported test/*
            parts += [("validation", "holdout", self.selection_set, "train"), ("testing", "val", self.val_set, "val")]
        return [DataSplit(context, split_name(self.cfg, split), files_digest(data, self.root / folder), len(data),
                          str((self.root / folder).resolve())) for context, split, data, folder in parts]

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
        """What selection sees (val/*): the holdout carved out of the training folder, else the val folder."""
        return self._loader(self.shard(self.selection_set), batch_size=self.cfg.batch_size // self._rank()[1])

    def reported_dataloader(self):
        return self._loader(self.val_set, batch_size=self.cfg.batch_size)

    def _loader(self, data, **kwargs):
        workers = self.cfg.num_workers
        return DataLoader(data, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)


IMAGEFOLDER_LAYOUT = "root/train/<class>/*.jpg and root/val/<class>/*"


def _imagefolder_root(cfg: ImageFolderData) -> Path:
    if cfg.root is None:
        raise AblateError(f"data.root: required for imagefolder (a folder laid out as {IMAGEFOLDER_LAYOUT})")
    root = Path(cfg.root).expanduser()
    for split in ("train", "val"):
        with at("data.root"):
            kind = path_kind(root / split)  # a name too long, a loop of links: said as such
        if kind != "folder":
            expected = IMAGEFOLDER_LAYOUT.replace("root", str(root))
            raise AblateError(f"data.root: {root / split} not found (imagefolder expects {expected})")
    return root


def files_digest(data: Dataset, folder: Path) -> str:
    """16 hex digits of SHA-256 over each sample's path under `folder` and its size in bytes, in the split's order."""
    base, rows = (data.dataset, data.indices) if isinstance(data, Subset) else (data, range(len(data)))
    h = hashlib.sha256()
    for i in rows:
        path = base.samples[i][0]
        h.update(f"{os.path.relpath(path, folder)}\t{os.path.getsize(path)}\n".encode())
    return h.hexdigest()[:16]


def _subset(data: Dataset, positions: torch.Tensor) -> Dataset:
    return data if len(positions) == len(data) else Subset(data, positions.tolist())
