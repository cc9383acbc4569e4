"""Training images/s of an ablate trial against a plain PyTorch loop on the same model, side by side in one run.

Run by hand from the repository root (never a test; tests/test_benchmarks.py only checks that --quick runs):

    PYTHONPATH=. python benchmarks/gpu_throughput.py            # one GPU: the full table (sized for < 5 minutes)
    PYTHONPATH=. python benchmarks/gpu_throughput.py --quick    # tiny shapes: about 30 s on 2 CPU cores
    PYTHONPATH=. python benchmarks/gpu_throughput.py --modes compiled --attention none,cbam   # a part of it

Workloads: resnet50 at 224 px on ImageNet-shaped synthetic data (1000 classes) and resnet18 at 32 px on
CIFAR-shaped synthetic data (10 classes); `--quick` puts resnet10_narrow (the project's CPU backbone) at 32 px
with 1000 classes in the first one's place. Each with attention none / se / cbam (position block), in
bf16-mixed with channels_last, eager and compiled (torch.compile; on CPU the compiled rows are skipped unless
--modes names them: their first step takes ~30 s per model on 2 cores).

  ablate  `run_trial` of a TrialConfig (synthetic data, ablate's SGD and cosine schedule, tracking into a
          temporary SQLite store, no weights logged, no checkpoint, validation off by default); its
          `train/throughput` metric (images/s of the training batches, logged per epoch) of the last epoch,
          read back from MLflow, so compile and other warm-up stay in the earlier epochs.
  plain   the same model (`ablate.models.build_model(...).model`) on the same device, data as one uint8 tensor
          on the device; per batch: index, float/normalise, forward under torch.autocast, cross entropy, SGD
          step (momentum 0.9, nesterov, weight decay: ablate's defaults); channels_last, `model.compile()` as
          ablate compiles. Timed per epoch between device synchronisations; the last epoch is reported.

Both sides train the same number of epochs and images per epoch, each row `--repeats` times (default 3), the sides
alternating; the table's ratio is the median of ablate / plain over the repeats (1.00: ablate costs nothing), and
`host ms/step` what that ratio costs per training step: (1/ablate - 1/plain) x batch, the host work ablate adds to
a step beyond the plain loop's (its floor). Ratios, never timed assertions. Each side runs with the flags the trial
chooses (train.deterministic: on a CPU deterministic algorithms, on a GPU cudnn.benchmark), and a trial gives the
process its flags back when it ends (device_flags.py). On CUDA, `--sync-debug` puts every steady training step of
the ablate side under torch.cuda.set_sync_debug_mode("error"): a step that made the host wait for the device fails
its row.
"""
from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from ablate.config import TrialConfig, parse_trial  # noqa: E402
from ablate.models import build_model  # noqa: E402
from ablate.train import run_trial  # noqa: E402

ATTENTION = ("none", "se", "cbam")
MODES = ("eager", "compiled")
CPU_COMPILE = ("compiled rows on cpu (torch.compile's first training step takes ~30 s per model on 2 cores; "
               "--modes eager,compiled runs them)")


@dataclass
class Workload:
    key: str  # --workloads name
    backbone: str
    image_size: int
    num_classes: int
    batch_size: int
    batches: int  # training batches per epoch

    @property
    def label(self) -> str:
        return f"{self.backbone} {self.image_size}px {self.num_classes}cl"

    @property
    def images(self) -> int:
        return self.batch_size * self.batches


def workloads(args) -> list[Workload]:
    if args.quick:
        imagenet = Workload("imagenet", "resnet10_narrow", 32, 1000, 32, 8)
        cifar = Workload("cifar", "resnet18", 32, 10, 32, 8)
    else:
        imagenet = Workload("imagenet", "resnet50", 224, 1000, 128, 8)
        cifar = Workload("cifar", "resnet18", 32, 10, 512, 16)
    for w in (imagenet, cifar):
        w.batch_size = getattr(args, f"{w.key}_batch_size") or w.batch_size
        w.batches = getattr(args, f"{w.key}_batches") or w.batches
    return [w for w in (imagenet, cifar) if w.key in args.workloads]


# ---------------------------------------------------------------- the two sides

def trial_config(w: Workload, attention: str, mode: str, device: torch.device, uri: str, args) -> TrialConfig:
    return parse_trial({
        "model": {"backbone": w.backbone, "attention": {"name": attention, "position": "block"}},
        "data": {"name": "synthetic", "image_size": w.image_size, "num_classes": w.num_classes,
                 "batch_size": w.batch_size, "train_size": w.images, "val_size": w.batch_size},
        "train": {"epochs": args.epochs, "lr": args.lr, "precision": args.precision, "channels_last": True,
                  "compile": mode == "compiled", "accelerator": device.type,
                  "devices": 1 if device.index is None else f"{device.index},",
                  "progress_bar": False, "checkpoint_every": 0, "limit_val_batches": args.val_batches},
        "tracking": {"uri": uri, "experiment": "gpu_throughput", "run_name": f"{w.label} {attention} {mode}",
                     "log_weights": False},
    }, source="gpu_throughput")


class SyncDebugSteady(pl.Callback):
    """torch.cuda.set_sync_debug_mode("error") over every training batch after the first of each epoch: reading back
    at an epoch's end is allowed, inside a steady step it raises."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        last = batch_idx == trainer.num_training_batches - 1
        torch.cuda.set_sync_debug_mode(0 if last else "error")

    def on_train_epoch_end(self, trainer, module):
        torch.cuda.set_sync_debug_mode(0)

    def on_validation_start(self, trainer, module):
        torch.cuda.set_sync_debug_mode(0)

    def on_exception(self, trainer, module, exception):
        torch.cuda.set_sync_debug_mode(0)


def ablate_side(cfg: TrialConfig, uri: str, sync_debug: bool = False) -> float:
    """run_trial, then the train/throughput of its last epoch from the run's metric history."""
    result = run_trial(cfg, callbacks=[SyncDebugSteady()] if sync_debug else [])
    history = MlflowClient(uri).get_metric_history(result.run_id, "train/throughput")
    if len(history) != cfg.train.epochs:
        raise RuntimeError(f"train/throughput has {len(history)} values for {cfg.train.epochs} epochs")
    return max(history, key=lambda m: m.step).value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_side(cfg: TrialConfig, w: Workload, device: torch.device, args) -> float:
    """A hand-written loop over the same model: images/s of its last epoch."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, w.num_classes, 3, w.image_size).model
    model = model.to(device, memory_format=torch.channels_last).train()
    if cfg.train.compile:
        model.compile()  # in place, as ablate compiles
    t = cfg.train
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                nesterov=True)  # timm's "sgd", ablate's default optimizer
    n, b = w.images, w.batch_size
    images = torch.randint(0, 256, (n, 3, w.image_size, w.image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, w.num_classes, (n,), device=device)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 3, 1, 1)
    bf16 = t.precision == "bf16-mixed"

    def step(idx: torch.Tensor) -> None:
        x = images[idx].float().div_(255).sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rate = math.nan
    for _ in range(t.epochs):  # the earlier epochs are the warm-up (compile, allocator, optimizer state)
        sync(device)
        start = time.perf_counter()
        order = torch.randperm(n, device=device)
        for i in range(n // b):
            step(order[i * b:(i + 1) * b])
        sync(device)
        rate = n // b * b / (time.perf_counter() - start)
    return rate


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the table

# complexity over 10 on purpose: a benchmark's table, top to bottom
def main() -> None:  # noqa: C901
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (32 px, batch 32, 8 batches): CPU-sized")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--workloads", default="imagenet,cifar", help="comma-separated: imagenet, cifar")
    parser.add_argument("--attention", default=",".join(ATTENTION), help="comma-separated attention modules")
    parser.add_argument("--modes", default=None,
                        help="comma-separated: eager, compiled (default both; compiled skipped on CPU)")
    parser.add_argument("--imagenet-batch-size", type=int, help="default 128 (--quick: 32)")
    parser.add_argument("--imagenet-batches", type=int, help="training batches per epoch; default 8 (--quick: 8)")
    parser.add_argument("--cifar-batch-size", type=int, help="default 512 (--quick: 32)")
    parser.add_argument("--cifar-batches", type=int, help="training batches per epoch; default 16 (--quick: 8)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per side, the last one measured; default 3 (--quick: 2); at least 2")
    parser.add_argument("--precision", choices=("bf16-mixed", "32"), default="bf16-mixed")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--val-batches", type=int, default=0,
                        help="ablate's limit_val_batches (validation is outside its train clock; default 0: off)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row's two sides; the median ratio")
    parser.add_argument("--sync-debug", action="store_true",
                        help="CUDA: the ablate side's steady steps under set_sync_debug_mode('error')")
    args = parser.parse_args()
    args.workloads = args.workloads.split(",")
    args.epochs = args.epochs or (2 if args.quick else 3)
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first carries compile and warm-up)")
    device = torch.device(args.device)
    modes = (args.modes or ",".join(MODES)).split(",")
    attention = args.attention.split(",")
    for given, allowed, flag in ((modes, MODES, "--modes"), (args.workloads, ("imagenet", "cifar"), "--workloads")):
        if not set(given) <= set(allowed):
            parser.error(f"{flag}: {','.join(sorted(set(given) - set(allowed)))} (allowed: {', '.join(allowed)})")

    store = tempfile.TemporaryDirectory(prefix="ablate-gpu-throughput-")  # removed at exit
    uri = f"sqlite:///{Path(store.name) / 'mlflow.db'}"
    rows, skipped, failed = [], [], []
    started = time.perf_counter()
    plan = []
    for w, mode, name in ((w, m, a) for w in workloads(args) for m in modes for a in attention):
        if mode == "compiled" and device.type == "cpu" and args.modes is None:
            skipped.append(f"{w.label} {name} {mode}")
        else:
            plan.append((w, mode, name))
    for i, (w, mode, name) in enumerate(plan, 1):
        cfg = trial_config(w, name, mode, device, uri, args)
        row_start = time.perf_counter()
        rates: dict[str, list[float]] = {"ablate": [], "plain": []}
        for _ in range(args.repeats):  # the sides alternate: a drift of the machine falls on both
            for side in ("ablate", "plain"):
                torch.compiler.reset()  # every compiled model starts fresh: no recompile limit across rows
                try:
                    rate = (ablate_side(cfg, uri, args.sync_debug and device.type == "cuda") if side == "ablate"
                            else plain_side(cfg, w, device, args))
                except Exception as e:  # noqa: BLE001 (one failed row is reported; the others still run)
                    rate = math.nan
                    failed.append(f"{w.label} {name} {mode} ({side}): {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}")
                    traceback.print_exc()
                rates[side].append(rate)
                release(device)
        ratio = statistics.median(a / p for a, p in zip(rates["ablate"], rates["plain"]))
        ablate_rate, plain_rate = statistics.median(rates["ablate"]), statistics.median(rates["plain"])
        rows.append({"workload": w.label, "attention": name, "mode": mode, "ablate img/s": ablate_rate,
                     "plain img/s": plain_rate, "ratio": ratio,
                     "host ms/step": 1e3 * w.batch_size * (1 / ablate_rate - 1 / plain_rate),
                     "ratios": " ".join(f"{a / p:.3f}" for a, p in zip(rates["ablate"], rates["plain"]))})
        print(f"[{i}/{len(plan)}] {w.label} {name} {mode}: ablate {ablate_rate:,.0f} img/s, plain "
              f"{plain_rate:,.0f} img/s ({time.perf_counter() - row_start:.0f} s)", file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print("\ntraining images/s: ablate run_trial vs a plain PyTorch loop, same model, same device")
    print(f"device: {name} | torch {torch.__version__} | timm {timm.__version__} | lightning {pl.__version__}")
    print(f"precision {args.precision}, channels_last, SGD lr {args.lr}; {args.epochs} epochs per side, "
          f"the last one measured")
    print("batch size: " + "; ".join(f"{w.label}: {w.batch_size} x {w.batches} batches/epoch"
                                     for w in workloads(args)))
    print()
    if rows:
        table = pd.DataFrame(rows)
        print(table.to_string(index=False, na_rep="failed", formatters={
            "ablate img/s": "{:,.0f}".format, "plain img/s": "{:,.0f}".format, "ratio": "{:.3f}".format,
            "host ms/step": "{:+.2f}".format}))
    else:
        print("(no rows run)")
    print(f"\nratio = median over {args.repeats} repeats of ablate / plain (each repeat's in `ratios`); host ms/step ="
          f" (1/ablate - 1/plain) x batch, the host work ablate adds per step."
          + (" Steady steps ran under set_sync_debug_mode('error')." if args.sync_debug and device.type == "cuda"
             else ""))
    if skipped:
        print(f"skipped, {CPU_COMPILE}:\n  " + "\n  ".join(skipped))
    for line in failed:
        print(f"failed: {line}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
