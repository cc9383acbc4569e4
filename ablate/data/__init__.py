"""Datamodules, one per data config class: the DATASETS table below, keyed by the classes of ablate/config/data.py.

Every datamodule keeps the contract of `DataModule` (base.py): train and study build it from the data config,
a dry run asks only its `shape`, a study runs its `check` before any trial, Grad-CAM undoes its normalisation
with its `mean`/`std`. Adding a dataset is a config class in ablate/config/data.py (its name, keys and defaults)
and its datamodule in the table.

    base.py         the DataModule contract, and the checks datasets share (subset sizes, auto-augment specs)
    order.py        the training order: drawn from train.seed or data.seed (data.order), resumable, sharded
    tensor.py       the in-memory path: uint8 tensors, batched crop/flip/normalise on the device
    digits.py       digits and cluttered digits, from scikit-learn's bundled 8x8 digits
    synthetic.py    random but learnable class templates
    cifar.py        CIFAR-10 and CIFAR-100 from their batch files
    imagefolder.py  ImageNet-layout folders through torchvision's ImageFolder and timm's transforms
"""
from __future__ import annotations

from ablate.config import (
    Cifar10Data,
    Cifar100Data,
    ClutteredDigitsData,
    DataBase,
    DigitsData,
    ImageFolderData,
    SyntheticData,
)
from ablate.data.base import DataModule
from ablate.data.cifar import Cifar10DataModule, Cifar100DataModule, CifarDataModule
from ablate.data.digits import ClutteredDigitsDataModule, DigitsDataModule
from ablate.data.imagefolder import ImageFolderDataModule
from ablate.data.synthetic import SyntheticDataModule
from ablate.data.tensor import TensorDataModule
from ablate.errors import AblateError

__all__ = ["DATASETS", "DataModule", "TensorDataModule", "build_datamodule", "check_data", "dataset_shape",
           "datamodule_class", "DigitsDataModule", "ClutteredDigitsDataModule", "SyntheticDataModule",
           "CifarDataModule", "Cifar10DataModule", "Cifar100DataModule", "ImageFolderDataModule"]

# a data config class -> its datamodule (the classes are the config union's: config.DATA_CONFIGS)
DATASETS: dict[type[DataBase], type[DataModule]] = {
    DigitsData: DigitsDataModule,
    ClutteredDigitsData: ClutteredDigitsDataModule,
    SyntheticData: SyntheticDataModule,
    Cifar10Data: Cifar10DataModule,
    Cifar100Data: Cifar100DataModule,
    ImageFolderData: ImageFolderDataModule,
}


def build_datamodule(cfg: DataBase, train_seed: int | None = None) -> DataModule:
    """The datamodule of `cfg`; a trial gives its `train_seed`, which draws the training order and augmentation
    under data.order: seed (order.py). data.seed alone fixes the dataset: its splits, holdout, synthesis, subsets."""
    module = datamodule_class(cfg)(cfg)
    module.seed_order(train_seed)
    return module


def check_data(cfg: DataBase) -> None:
    """What can be checked without loading anything (a dataset folder is there): before a study starts."""
    datamodule_class(cfg).check(cfg)


def dataset_shape(cfg: DataBase) -> tuple[int, int]:
    """(num_classes, in_chans) without loading anything: what a dry run needs to build the model."""
    return datamodule_class(cfg).shape(cfg)


def datamodule_class(cfg: DataBase) -> type[DataModule]:
    if type(cfg) not in DATASETS:  # every class in config.DATA_CONFIGS has one (tested); this guards others
        raise AblateError(f"data.name: {cfg.name!r} has no datamodule (the table ablate.data.DATASETS has "
                          f"{', '.join(c.__name__ for c in DATASETS)})")
    return DATASETS[type(cfg)]
