"""What an epoch of training cost: throughput, epoch time, peak memory and lr, one record per epoch.

The host runs ahead of a GPU, so the clock is read only once the device has caught up: at each validation's start and
end (validation runs inside the epoch and is not training time) and at the epoch's end; never inside a step.
"""
from __future__ import annotations

import resource
import sys
import time

import pytorch_lightning as pl
import torch

__all__ = ["EpochStats", "device_clock", "peak_memory_mb"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # the process's lifetime peak resident set (it never resets): kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


class EpochStats(pl.Callback):
    """Throughput, epoch time, peak memory and lr, logged with the epoch's training metrics (one record each).

    Lightning's ThroughputMonitor and DeviceStatsMonitor log per batch under their own names, and its
    LearningRateMonitor logs at the epoch's start, one name per param group (timm makes two) and outside the
    epoch's logging call; reading the lr here keeps one value per epoch, after the epoch's last update.
    """

    def on_train_start(self, trainer, module):
        self.on_train_epoch_start(trainer, module)  # a trial resumed mid-epoch gets no epoch-start call

    def on_train_epoch_start(self, trainer, module):
        self.images, self.training_s = 0, 0.0
        self.start = self.resumed = device_clock(module.device)
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.images += len(batch[1]) * trainer.world_size  # every rank trains on a batch of this size

    # validation runs inside the epoch: the train clock stops for it, once the device has caught up
    def on_validation_start(self, trainer, module):
        self.training_s += device_clock(module.device) - self.resumed

    def on_validation_end(self, trainer, module):
        self.resumed = device_clock(module.device)

    def on_train_epoch_end(self, trainer, module):
        end = device_clock(module.device)  # the host's clock once the device has finished the epoch's work
        self.training_s += end - self.resumed
        module.log_dict({
            "train/throughput": self.images / max(self.training_s, 1e-9),  # images/s
            "train/epoch_time": end - self.start,  # seconds, validation included
            "train/peak_mem_mb": peak_memory_mb(module.device),
            "train/lr": trainer.optimizers[0].param_groups[0]["lr"],  # after the epoch's last update
        }, on_epoch=True)


def device_clock(device: torch.device) -> float:
    """The clock once the device has done what was queued on it (the host runs ahead of a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
