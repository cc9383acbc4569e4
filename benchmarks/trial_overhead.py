"""What ablate's trial machinery costs: run_trial against a plain PyTorch loop doing the same work.

Same model (timm resnet18, in_chans=1, 10 classes), same data (cluttered-digits, same batches, same
on-device transform), same optimizer (timm SGD) and per-update cosine schedule, same batch size and
epochs, one validation pass per epoch. ablate adds Lightning, torchmetrics, the NaN check, GMACs
counting, the MLflow run (params, per-epoch metrics, artifacts). Imports and creating the store's
tables are one-time costs per process and excluded from both sides.

    PYTHONPATH=. python benchmarks/trial_overhead.py                     # ~1 minute trials, 3 runs each
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/trial_overhead.py   # on a busy shared machine
    PYTHONPATH=. python benchmarks/trial_overhead.py --epochs 1 --train-size 256 --repeats 1  # quick look

Wall time is the goal's measure; CPU time of this process is printed too, as it is far less
disturbed by other work on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from ablate import tracking
from ablate.config import TrialConfig
from ablate.data import build_datamodule
from ablate.models import build_model
from ablate.train import run_trial


def plain_loop(cfg: TrialConfig) -> float:
    """The trial as a hand-written loop; returns the final val accuracy."""
    torch.manual_seed(cfg.train.seed)
    data = build_datamodule(cfg.data)
    model = build_model(cfg.model, data.num_classes, data.in_chans, data.image_size).model
    t = cfg.train
    optimizer = create_optimizer_v2(model, t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    scheduler, _ = create_scheduler_v2(optimizer, sched=t.schedule, num_epochs=t.epochs, min_lr=t.min_lr,
                                       step_on_epochs=False, updates_per_epoch=len(train_loader))
    step = 0
    for _ in range(t.epochs):
        model.train()
        for batch in train_loader:
            x, y = data.transform_batch(batch, train=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in val_loader:
                x, y = data.transform_batch(batch, train=False)
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side; the table shows the median")
    parser.add_argument("--progress-bar", action="store_true", help="ablate side with Lightning's progress bar")
    args = parser.parse_args()

    store = tempfile.TemporaryDirectory(prefix="ablate-overhead-")  # removed at exit
    uri = f"sqlite:///{Path(store.name) / 'mlflow.db'}"
    cfg = TrialConfig.model_validate({
        "model": {"backbone": "resnet18"},
        "data": {"name": "cluttered-digits", "image_size": args.image_size, "batch_size": args.batch_size,
                 "train_size": args.train_size, "val_size": args.val_size},
        "train": {"epochs": args.epochs, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine",
                  "accelerator": "cpu", "progress_bar": args.progress_bar},
        "tracking": {"uri": uri, "experiment": "overhead"},
    })
    # an existing store, as in any study after its first trial
    tracking.get_or_create_experiment(tracking.make_client(uri), "overhead")

    names = ("plain PyTorch loop", "ablate run_trial")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}  # this process only: robust to a busy machine
    acc: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in names:  # alternate, so drifting machine load hits both sides alike
            start, start_cpu = time.perf_counter(), time.process_time()
            acc[name] = plain_loop(cfg) if name.startswith("plain") else run_trial(cfg).metrics["val/acc1"]
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    steps = args.epochs * (args.train_size // args.batch_size)
    print(f"\nresnet18 in_chans=1, cluttered-digits {args.image_size}px, train {args.train_size} / val "
          f"{args.val_size}, batch {args.batch_size}, {args.epochs} epochs ({steps} steps), "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs")
    print(f"{'loop':<20} {'wall s':>8} {'ratio':>7} {'cpu s':>8} {'ratio':>7} {'val acc1':>9}   wall s of each run")
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        w0, c0 = statistics.median(wall[names[0]]), statistics.median(cpu[names[0]])
        runs = " ".join(f"{t:.1f}" for t in wall[name])
        print(f"{name:<20} {w:>8.1f} {w / w0:>7.3f} {c:>8.1f} {c / c0:>7.3f} {acc[name]:>9.3f}   {runs}")


if __name__ == "__main__":
    main()
