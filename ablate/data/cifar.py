"""CIFAR-10 and CIFAR-100 from their batch files, read into uint8 tensors (the in-memory path).

The batch files are pickles in data.root, a folder others may write: they are read by an unpickler that builds
numpy arrays and plain containers and imports nothing else (a file that would call anything is refused by name)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from ablate.config import CifarData
from ablate.data.base import pick
from ablate.data.tensor import TensorDataModule
from ablate.errors import AblateError, at, path_kind

# what CIFAR's own (Python 2) batch files and numpy's Python 3 pickles of an array import, and nothing else
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: protocol 2's bytes


class BatchUnpickler(pickle.Unpickler):
    """pickle's own reader, restricted to ARRAY_GLOBALS (the Python docs' "Restricting Globals")."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it would import {module}.{name}, and a batch file holds arrays and lists "
                                         "only (refused, never called)")
        return super().find_class(module, name)


class CifarDataModule(TensorDataModule):
    """CIFAR from data.root, read into uint8 tensors; resized on the device when image_size != 32."""

    source: type  # torchvision's class: the folder name, the batch file names and the download
    title: str
    label_key: str  # the labels' key in each pickled batch

    @classmethod
    def shape(cls, cfg: CifarData) -> tuple[int, int]:
        return cfg.class_count, 3

    @classmethod
    def split_sizes(cls, cfg: CifarData) -> tuple[int, int]:
        return 50000, 10000  # both CIFARs' train and test batches

    @classmethod
    def check(cls, cfg: CifarData) -> None:
        super().check(cfg)
        cls.folder(cfg)

    @classmethod
    def folder(cls, cfg: CifarData) -> tuple[Path, Path]:
        """(root, the dataset's folder under it), or a one-line error when it is missing and not to be
        downloaded."""
        base = cls.source.base_folder
        if cfg.root is None:
            raise AblateError(f"data.root: required for {cfg.name} (the folder that holds {base}, "
                              "or where to put it with data.download: true)")
        root = Path(cfg.root).expanduser()
        folder = root / base
        with at("data.root"):
            kind = path_kind(folder)  # a name too long, a loop of links: said as such
        if kind != "folder" and not cfg.download:
            raise AblateError(f"data.root: {cls.title} not found under {root} (expected {folder}; put the "
                              "dataset there or set data.download: true)")
        return root, folder

    def __init__(self, cfg: CifarData):
        root, folder = self.folder(cfg)
        if not folder.is_dir():  # folder() let it through: data.download is on
            self.source(str(root), train=True, download=True)  # torchvision fetches and checksums the archive
        # read the batch files ourselves, not through torchvision's dataset: its constructor MD5-checks all
        # 170 MB on every trial and calls any bad file "Dataset not found or corrupted"; ours names the file
        x_train, y_train = self._read(folder, self.source.train_list)
        x_val, y_val = self._read(folder, self.source.test_list)
        gen = torch.Generator().manual_seed(cfg.seed)
        train = pick(len(y_train), cfg.train_size, "train_size", gen)
        val = pick(len(y_val), cfg.val_size, "val_size", gen)
        super().__init__(cfg, x_train[train], y_train[train], x_val[val], y_val[val],
                         num_classes=cfg.class_count)
        self.data_folder = str(folder.resolve())

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
                    entry = BatchUnpickler(f, encoding="latin1").load()
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
