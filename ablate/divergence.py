"""A NaN or inf training loss caught without making the host wait for the device.

`if not torch.isfinite(loss)` in a training step reads the loss back to the host: the host stops queueing kernels
until the device has finished the step, which on a GPU throws away the overlap a small model lives on. Instead each
step folds its loss into a record that stays on the device (the first non-finite loss, its epoch and its step), and
starts a non-blocking copy of that record into pinned host memory; the next step reads the copy if the device has
finished it (a CUDA event's query, which never waits), else it keeps it pending. So a diverged trial runs on for at
most as many steps as the host runs ahead of the device (one on a CPU) and never past a synchronous check: the
epoch's end, a validation's start and every checkpoint read the record with a wait, so no checkpoint and no
validation ever holds diverged weights. The failure's reason names the step where the loss first went non-finite.
"""
from __future__ import annotations

import torch

__all__ = ["DivergedError", "DivergenceWatch"]

FLAG, LOSS, EPOCH, STEP = range(4)  # the record's fields


class DivergedError(RuntimeError):
    """The training loss became NaN or inf: the trial stops and its run ends FAILED with this message."""


class DivergenceWatch:
    """The record of a trial's first non-finite training loss, on the device, and its host copy."""

    def __init__(self):
        self.record: torch.Tensor | None = None  # on the device: flag, loss, epoch, step
        self.host: torch.Tensor | None = None  # pinned on CUDA; its numpy view reads it without a tensor call
        self.view = None
        self.pending: torch.cuda.Event | None = None  # the copy in flight (CUDA), or None

    def update(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Fold this step's loss into the record and start copying it to the host; reads last step's copy first."""
        self.poll()
        loss = loss.detach().float()
        if self.record is None or self.record.device != loss.device:
            self._allocate(loss.device)
        bad = ~torch.isfinite(loss) & (self.record[FLAG] == 0)  # only the first non-finite step is kept
        here = torch.stack([torch.ones_like(loss), loss, torch.full_like(loss, epoch), torch.full_like(loss, step)])
        self.record.copy_(torch.where(bad, here, self.record))
        if self.pending is None:  # one copy in flight at a time: the host never queues behind its own reads
            self.host.copy_(self.record, non_blocking=True)
            if self.record.device.type == "cuda":
                self.pending = torch.cuda.Event()
                self.pending.record()
            else:
                self._read()

    def poll(self) -> None:
        """Read the host copy if the device has finished it (never waits)."""
        if self.pending is not None and self.pending.query():
            self.pending = None
            self._read()

    def check(self) -> None:
        """Wait for the device and raise if any step so far diverged (epoch ends, validations, checkpoints)."""
        if self.record is None:
            return
        if self.pending is not None:
            self.pending.synchronize()
            self.pending = None
        self.host.copy_(self.record)
        self._read()

    def _allocate(self, device: torch.device) -> None:
        self.record = torch.zeros(4, device=device)
        self.host = torch.zeros(4, pin_memory=device.type == "cuda")
        self.view = self.host.numpy()  # shares the host copy's memory: reading it is no tensor call
        self.pending = None

    def _read(self) -> None:
        flag, loss, epoch, step = self.view.tolist()
        if flag:
            raise DivergedError(f"train/loss is {loss} at epoch {int(epoch)}, step {int(step)}")
