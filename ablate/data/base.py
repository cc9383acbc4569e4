"""The DataModule contract every dataset keeps, and the checks they share (subset sizes, auto-augment specs)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from ablate.config import DataBase
from ablate.data.order import ResumableOrder
from ablate.errors import AblateError


class DataModule(ResumableOrder, pl.LightningDataModule):
    """What every datamodule provides.

    Instances: `num_classes`, `in_chans`, `image_size` (the side trained on), `test_size` (the side evaluated:
    data.test_size, else image_size); `mean` and `std`, the per-channel normalisation in
    [0, 1] units (so an input can be shown as an image again); `classes`, one name per class; the dataloaders,
    whose training batches come from `shuffled_batches` (order.py: resumable, sharded, drawn from `order_seed`,
    which `seed_order` sets); `val_dataloader` is the split selection sees (val/*: the data.holdout carved out of
    the training split, else the dataset's val split), `reported_dataloader` the split a table reports (the
    dataset's own val/test split, whole, unsharded, in a fixed order); `transform_batch(batch,
    train=...)`, which Lightning applies to each batch once it is on the device (outside a Trainer, in plain loops
    and tests, call it on each batch yourself).
    Classes: `shape(cfg)` and `check(cfg)`, which load nothing, so dry runs and study checks stay cheap.
    """

    cfg: DataBase
    num_classes: int
    in_chans: int
    image_size: int
    test_size: int
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    _device_stats: tuple = (None,)  # (device, mean, std) once `_stats` has copied them there

    @classmethod
    def shape(cls, cfg: DataBase) -> tuple[int, int]:
        """(num_classes, in_chans) for `cfg`: what a dry run needs to build the model."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: DataBase) -> None:
        """Raise AblateError for what is wrong without loading anything (a missing folder, a subset larger than
        the dataset, an auto-augment spec timm does not parse); subclasses add their own checks to these."""
        timm_auto_augment(cfg.auto_augment, cfg.image_size, [0.5])  # built for its error, if any
        sizes = cls.split_sizes(cfg) or (None, None)
        for key, n, available in zip(("train_size", "val_size"), (cfg.train_size, cfg.val_size), sizes, strict=True):
            check_subset(key, n, available)
        if sizes[0] is not None:
            holdout_size(cfg.holdout, cfg.train_size or sizes[0])

    @classmethod
    def split_sizes(cls, cfg: DataBase) -> tuple[int, int] | None:
        """(train, val) samples of a dataset of fixed size; None where they are synthesised or counted on load."""
        return None

    def reported_dataloader(self):
        """The dataset's own val/test split, whole and unsharded, in its fixed order: what the table reports
        (val/* without a holdout, test/* with one), scored once after training (evaluate.py)."""
        raise NotImplementedError

    def splits(self) -> list[DataSplit]:
        """What a trial reads, split by split (training, validation, and with a holdout testing), each with a digest
        of its content: a trial's run records them as its MLflow dataset inputs."""
        raise NotImplementedError

    def transform_batch(self, batch, train: bool):
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # runs on the already-moved batch; the trainer says whether this is a training step
        return self.transform_batch(batch, train=self.trainer is not None and self.trainer.training)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std shaped (C, 1, 1) on `device`, copied there once rather than every step."""
        if self._device_stats[0] != device:
            self._device_stats = device, self.mean.to(device)[:, None, None], self.std.to(device)[:, None, None]
        return self._device_stats[1:]


@dataclass(frozen=True)
class DataSplit:
    """One split a trial reads, as its run records it (an MLflow dataset input)."""

    context: str  # MLflow's input context: "training", "validation" (what selection sees), "testing" (a holdout's
    # reported split)
    name: str  # the dataset and its split: "cluttered-digits/train", "cifar10/holdout", "imagefolder/val"
    digest: str  # of the content: the images and labels held in memory, or an image folder's file names and sizes
    rows: int
    folder: str | None = None  # the folder it is read from; None for data made in memory
    made_by: str | None = None  # what makes it in memory (ablate's module, or the bundled source it starts from)


def split_name(cfg: DataBase, split: str) -> str:
    return f"{cfg.name}/{split}"


def content_digest(*tensors: torch.Tensor) -> str:
    """16 hex digits of SHA-256 over the tensors' shapes, dtypes and bytes: changes with any image or label."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().data if t.numel() else b"")
    return h.hexdigest()[:16]


def check_subset(key: str, n: int | None, available: int | None) -> None:
    """data.train_size / val_size `n` may not exceed the `available` samples (None: not known, or all)."""
    if n is not None and available is not None and n > available:
        raise AblateError(f"data.{key}: {n} is more than the {available} samples available "
                          f"(use at most {available}, or null for all)")


def pick(available: int, n: int | None, key: str, gen: torch.Generator) -> torch.Tensor:
    """Sorted positions of a random n-subset (all when n is null); n beyond what exists is a config error."""
    if n is None:
        return torch.arange(available)
    check_subset(key, n, available)
    return torch.randperm(available, generator=gen)[:n].sort().values


def holdout_size(holdout: int | float | None, available: int) -> int:
    """How many of the `available` training samples data.holdout holds out (0 without one); at least one must be
    held out and at least one left to train on."""
    if holdout is None:
        return 0
    n = holdout if isinstance(holdout, int) else round(holdout * available)
    if not 1 <= n < available:
        raise AblateError(f"data.holdout: {holdout!r} holds out {n} of the {available} training samples (hold out "
                          f"at least 1 and fewer than {available}: an integer, or a fraction in (0, 1))")
    return n


@dataclass
class Holdout:
    """Sorted positions in a training split: those trained on, and those held out to select on (data.holdout)."""

    train: torch.Tensor
    held: torch.Tensor


def holdout_split(labels: torch.Tensor, holdout: int | float | None, seed: int) -> Holdout | None:
    """The data.holdout of a training split with these `labels` (None without one): a random subset drawn from
    `seed` (data.seed), stratified: each class held out in proportion to its size."""
    if holdout is None:
        return None
    n = holdout_size(holdout, len(labels))
    gen = torch.Generator().manual_seed(seed + 3)  # its own stream: the dataset's other draws stay as they were
    order = torch.randperm(len(labels), generator=gen)
    drawn = labels[order]
    counts = torch.bincount(drawn)
    grouped = torch.argsort(drawn, stable=True)  # draw order within each class
    rank = torch.empty_like(order)
    rank[grouped] = torch.arange(len(order)) - (counts.cumsum(0) - counts)[drawn[grouped]]
    # each class's k-th drawn sample sits at (k + 0.5) / its size: the first n spread over classes in proportion
    spread = torch.argsort((rank + 0.5) / counts[drawn], stable=True)
    held = torch.zeros(len(labels), dtype=torch.bool)
    held[order[spread[:n]]] = True
    return Holdout(torch.nonzero(~held)[:, 0], torch.nonzero(held)[:, 0])


def timm_auto_augment(spec: str | None, size: int, mean: list[float]):
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
