"""One trial, top to bottom: a timm backbone trained by Lightning with timm's tricks, tracked in MLflow.

    TrialModule      loss (label smoothing / mixup / cutmix), EMA, accuracy, timm optimizer + schedule
    EpochLogger      per-epoch metrics to MLflow in one batch per phase (+ throughput, time, memory, lr)
    make_trainer     the Lightning Trainer for a TrainConfig
    run_trial        data -> model -> trainer -> tracked run -> TrialResult

Every trick is a TrainConfig key and timm's implementation: create_optimizer_v2 (no weight decay on
biases and norms), create_scheduler_v2 stepped per update, LabelSmoothingCrossEntropy, Mixup with
SoftTargetCrossEntropy, ModelEmaV3. Stochastic depth and dropout are model keys (timm.create_model).
"""
from __future__ import annotations

import logging
import resource
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ablate import tracking
from ablate.config import TrainConfig, TrialConfig, flatten
from ablate.data import build_datamodule
from ablate.errors import AblateError, one_line
from ablate.models import build_model

# Lightning's info lines (GPU available, tips, "fit stopped") would bury the study's own progress lines
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # a deprecation inside Lightning itself
# in-memory datasets batch in the main process on purpose (num_workers=0 is not a mistake)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# the EMA copy lives in eval mode on purpose
warnings.filterwarnings("ignore", r".*module\(s\) in eval mode at the start of training.*")


INTERRUPT = threading.Event()  # set by Ctrl-C; the trial stops at its next batch


@contextmanager
def deferred_interrupt():
    """Ctrl-C asks for a stop at the next batch instead of raising wherever the process is, so it never cuts
    an MLflow write in half (a half-written SQLite transaction locks the store for every other worker)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum, frame):
        if not INTERRUPT.is_set():
            print("\nCtrl-C: stopping at the next batch", file=sys.stderr, flush=True)
        INTERRUPT.set()

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_interrupt() -> None:
    if INTERRUPT.is_set():
        raise KeyboardInterrupt("interrupted (Ctrl-C)")


class StopOnInterrupt(pl.Callback):
    """Where a requested Ctrl-C lands: between batches (Lightning then shuts the fit down gracefully)."""

    def on_train_batch_start(self, *args):
        check_interrupt()

    def on_validation_batch_start(self, *args):
        check_interrupt()


class DivergedError(RuntimeError):
    """The training loss became NaN or inf: the trial stops and its run ends FAILED with this message."""


@dataclass
class TrialResult:
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # final value of every logged metric
    best_acc1: float | None = None  # best val/acc1 over epochs; None when validation never ran
    status: str = "FINISHED"


def accuracy(num_classes: int, postfix: str = "") -> MetricCollection:
    # top-5 of 5 or fewer classes is always 1: not logged rather than logged as a constant
    ks = {"acc1": 1, "acc5": 5} if num_classes > 5 else {"acc1": 1}
    return MetricCollection({name: MulticlassAccuracy(num_classes, top_k=k, average="micro")
                             for name, k in ks.items()}, prefix="val/", postfix=postfix)


class TrialModule(pl.LightningModule):
    def __init__(self, model: nn.Module, cfg: TrainConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # timm folds label smoothing into mixup's soft targets; without mixup it smooths the loss itself
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                           num_classes=num_classes) if cfg.mixup or cfg.cutmix else None
        self.criterion = (SoftTargetCrossEntropy() if self.mixup is not None
                          else LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing
                          else nn.CrossEntropyLoss())
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        if self.ema is not None:
            self.ema.requires_grad_(False)  # averaged, never trained
        self.val_acc = accuracy(num_classes)
        self.ema_acc = accuracy(num_classes, postfix="_ema") if cfg.ema else None
        self.best_acc1 = 0.0
        if cfg.compile:
            model.compile()  # in place: parameter names and the EMA copy stay as they are

    def forward(self, x, model: nn.Module | None = None):
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (model or self.model)(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            n = len(y) // 2 * 2  # timm's Mixup pairs each sample with its mirror: even batches only
            x, y = self.mixup(x[:n], y[:n])
        loss = self.criterion(self(x), y)
        if not torch.isfinite(loss):  # a NaN would silently poison every later epoch
            raise DivergedError(f"train/loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}")
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.val_acc.update(logits, y)
        if self.ema is not None:
            ema_logits = self(x, self.ema.module)
            self.log("val/loss_ema", F.cross_entropy(ema_logits, y), on_epoch=True, batch_size=len(y))
            self.ema_acc.update(ema_logits, y)

    def on_validation_epoch_end(self):
        metrics = self.val_acc.compute()
        self.val_acc.reset()
        if self.ema is not None:
            metrics |= self.ema_acc.compute()
            self.ema_acc.reset()
        self.best_acc1 = max(self.best_acc1, float(metrics["val/acc1"]))
        self.log_dict({**metrics, "val/acc1_best": self.best_acc1}, prog_bar=True)

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = create_optimizer_v2(self.model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
        # per-update stepping: warmup and decay stay smooth even for trials of a few epochs
        per_epoch = max(1, self.trainer.estimated_stepping_batches // cfg.epochs)  # honours limit_train_batches
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.schedule, num_epochs=cfg.epochs,
                                           decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
                                           min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
                                           step_on_epochs=False, updates_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers take the update count


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # the process's lifetime peak resident set (it never resets): kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


class EpochLogger(pl.Callback):
    """Sends each epoch's metrics to MLflow, one log_batch for validation, one for training.

    Validation is logged as soon as it ends, so a trial pruned right after it still has that epoch.
    """

    def __init__(self):
        self.mlflow, self.run_id, self.last = None, None, {}

    def bind(self, mlflow, run_id: str) -> None:
        self.mlflow, self.run_id = mlflow, run_id

    def _log(self, metrics: dict, step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.last |= metrics
        if self.run_id:
            tracking.log_metrics(self.mlflow, self.run_id, metrics, step)

    def on_train_epoch_start(self, trainer, module):
        self.images, self.start = 0, time.perf_counter()
        self.train_end = self.start
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.images += len(batch[1])
        self.train_end = time.perf_counter()  # validation runs inside the epoch: stop the train clock here

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self._log({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
                      trainer.current_epoch)

    def on_train_epoch_end(self, trainer, module):
        train = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        self._log(train | {
            "train/throughput": self.images / max(self.train_end - self.start, 1e-9),  # images/s
            "train/epoch_time": time.perf_counter() - self.start,  # seconds, validation included
            "train/peak_mem_mb": peak_memory_mb(module.device),
            "train/lr": trainer.optimizers[0].param_groups[0]["lr"],  # after the epoch's last update
        }, trainer.current_epoch)


def make_trainer(cfg: TrainConfig, callbacks=()) -> pl.Trainer:
    """Lightning checks accelerator, devices and precision here, before anything is tracked."""
    try:
        trainer = pl.Trainer(
            max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
            deterministic="warn",  # deterministic kernels where they exist, a warning where they do not
            limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_val_batches,
            enable_progress_bar=cfg.progress_bar, enable_model_summary=False,
            logger=False, enable_checkpointing=False,  # MLflow is the record; a trial is cheap to rerun
            num_sanity_val_steps=0, callbacks=list(callbacks))
    except Exception as e:  # Lightning's MisconfigurationException and ValueErrors: bad input, one line
        raise AblateError(f"train: {one_line(e)}") from None
    if trainer.num_devices > 1:
        raise AblateError(f"train.devices: {cfg.devices!r} is {trainer.num_devices} devices; a trial uses one "
                          "(parallel trials are separate worker processes)")
    return trainer


def run_trial(cfg: TrialConfig, *, callbacks=(), parent_run_id: str | None = None,
              tags: dict | None = None) -> TrialResult:
    """Train one config and record it as an MLflow run (a child of `parent_run_id` when given).

    Bad input raises AblateError before the store is touched; once the run exists it always ends
    FINISHED, FAILED (reason tag, e.g. DivergedError) or KILLED (pruned, interrupted).
    """
    with deferred_interrupt():
        return _run_trial(cfg, callbacks, parent_run_id, tags)


def _run_trial(cfg: TrialConfig, callbacks, parent_run_id: str | None, tags: dict | None) -> TrialResult:
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = build_datamodule(cfg.data)
    built = build_model(cfg.model, data.num_classes, data.in_chans, data.image_size)
    module = TrialModule(built.model, cfg.train, data.num_classes)
    epoch_logger = EpochLogger()
    # ours first: a caller's pruning callback may stop the trial right after validation
    trainer = make_trainer(cfg.train, [epoch_logger, *callbacks, StopOnInterrupt()])

    mlflow = tracking.make_client(cfg.tracking.uri)
    experiment_id = tracking.get_or_create_experiment(cfg.tracking.experiment, mlflow.tracking_uri)
    with tracking.tracked_run(mlflow, experiment_id, run_name=cfg.tracking.run_name,
                              parent_run_id=parent_run_id, tags=tags) as run_id:
        size = {"model/params": built.params, "model/gmacs": built.gmacs}
        tracking.log_params(mlflow, run_id, flatten(cfg) | {"model.num_params": built.params,
                                                           "model.gmacs": built.gmacs})
        tracking.log_metrics(mlflow, run_id, size, step=0)
        tracking.log_trial_artifacts(mlflow, run_id, cfg.model_dump(mode="json"), built.report)
        epoch_logger.bind(mlflow, run_id)
        try:
            trainer.fit(module, datamodule=data)
        except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1); callers need to see the interrupt
            if trainer.interrupted:
                raise KeyboardInterrupt("interrupted (Ctrl-C)") from None
            raise
        if cfg.tracking.log_weights:
            tracking.log_weights(mlflow, run_id, built.model)
    metrics = epoch_logger.last | {k: float(v) for k, v in size.items()}
    return TrialResult(run_id, metrics, metrics.get("val/acc1_best"))
