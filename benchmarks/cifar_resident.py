"""CIFAR on the device vs from the host: training images/s of ResNet-20, one trial's real path, no data needed.

    PYTHONPATH=. python benchmarks/cifar_resident.py --quick     # under a minute on a CPU: 512 images
    PYTHONPATH=. python benchmarks/cifar_resident.py             # CIFAR-10's 50,000 images, on a GPU box

  resident  `data.on_device: true` (ablate's default): the uint8 training set moves to the accelerator once; a
            batch is an index into device memory, crop (pad 4) + flip + normalise run batched there
  host      `data.on_device: false`: the same uint8 batches are indexed on the host and copied to the device
            every step, then augmented there the same way

Both rows run ablate's Cifar10DataModule on a CIFAR-10 folder of random images written to a temporary
directory (the real batch-file format), ResNet-20 with the ResNet paper's optimiser, Lightning's Trainer from
`ablate.train.make_trainer` and `TrialModule`; img/s is EpochStats' train/throughput of the last epoch (the
first warms up). On a CPU the two paths are the same memory, so the rows agree; the gap is the accelerator's.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ablate.config import Cifar10Data, ModelConfig, TrainConfig  # noqa: E402
from ablate.data import build_datamodule  # noqa: E402
from ablate.models import build_model  # noqa: E402
from ablate.train import EpochStats, TrialModule, make_trainer, quiet_lightning  # noqa: E402


def write_cifar10(root: Path, train: int, test: int) -> None:
    """CIFAR-10's python layout (cifar-10-batches-py: 5 training batch files and a test batch) of random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [train // 5 + (i < train % 5) for i in range(5)]
    for name, n in [*((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)), ("test_batch", test)]:
        entry = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def throughput(root: Path, on_device: bool, args) -> float:
    data = Cifar10Data(root=str(root), image_size=32, batch_size=args.batch_size, hflip=0.5, on_device=on_device)
    train = TrainConfig(epochs=args.epochs, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="constant",
                        accelerator=args.accelerator, precision=args.precision, progress_bar=False,
                        checkpoint_every=0, limit_val_batches=1)
    torch.manual_seed(0)
    datamodule = build_datamodule(data)
    model = build_model(ModelConfig(backbone="resnet20"), 10, 3, 32).model
    with quiet_lightning():
        trainer = make_trainer(train, callbacks=[EpochStats()])
        trainer.fit(TrialModule(model, train, 10), datamodule=datamodule)
    return float(trainer.callback_metrics["train/throughput"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 training images: under a minute on a CPU")
    parser.add_argument("--images", type=int, help="training images (default: CIFAR-10's 50,000; 512 with --quick)")
    parser.add_argument("--epochs", type=int, default=2, help="img/s is the last epoch's; the first warms up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or (512 if args.quick else 50_000)
    with tempfile.TemporaryDirectory(prefix="ablate-cifar-") as tmp:
        write_cifar10(Path(tmp), images, 256)
        rows = [{"path": name, "img/s": throughput(Path(tmp), on_device, args)}
                for name, on_device in (("resident", True), ("host", False))]
    table = pd.DataFrame(rows)
    table["vs host"] = table["img/s"] / table.loc[1, "img/s"]
    where = torch.cuda.get_device_name() if torch.cuda.is_available() and args.accelerator != "cpu" else "CPU"
    print(f"\nResNet-20 training on CIFAR-shaped data, {where}: {images:,} images, batch {args.batch_size}, "
          f"precision {args.precision}, epoch {args.epochs} of {args.epochs}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}\n")
    print(table.to_string(index=False, formatters={"img/s": "{:,.0f}".format, "vs host": "{:.2f}".format}))


if __name__ == "__main__":
    main()
