"""What a trial sets process-wide for its device, and gives back when it ends.

Determinism is a trial's choice (train.deterministic): on a CPU it is on by default (it costs nothing there and a
killed trial then resumes to the same numbers, 1e-6), on an accelerator off by default (cudnn.benchmark picks the
fastest kernels; a resumed trial then continues from the same weights, optimizer state and data order, but its later
numbers differ from an uninterrupted run's by kernel-level rounding, as two uninterrupted runs' do). On is torch's
deterministic algorithms in warn-only mode (a deterministic kernel wherever one exists, a warning where none does),
cudnn's benchmark off and its deterministic flag on, and cuBLAS's workspace pinned.

torch keeps these flags, the global RNGs and Lightning's seed variables for the whole process: `trial_flags` records
them before a trial and puts them back after it, so a notebook (or the next trial in a worker) keeps its own.
torch.compile's caches are reset per trial too: every trial builds a new model, and a worker's tenth compiled trial
must not meet dynamo's recompile limit and fall back to eager.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ProcessFlags", "apply_determinism", "trial_flags", "wants_determinism"]

CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic matmuls
SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")  # what Lightning's seed_everything leaves in os.environ


@dataclass
class ProcessFlags:
    """The process-wide state a trial may change."""

    deterministic: bool
    warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    matmul_precision: str
    environ: dict[str, str | None]
    rng: tuple

    @classmethod
    def now(cls) -> ProcessFlags:
        names = (CUBLAS_WORKSPACE[0], *SEED_VARIABLES)
        rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
               torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
        return cls(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                   torch.get_float32_matmul_precision(), {k: os.environ.get(k) for k in names}, rng)

    def restore(self) -> None:
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.set_float32_matmul_precision(self.matmul_precision)
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        python, numpy, cpu, cuda = self.rng
        random.setstate(python)
        np.random.set_state(numpy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def wants_determinism(setting: bool | None, accelerator: str) -> bool:
    """train.deterministic: true / false as given; null (auto) on a CPU only."""
    return setting if setting is not None else accelerator == "cpu"


def apply_determinism(on: bool, accelerator: str) -> None:
    """Set torch's flags for a trial on this accelerator (Lightning's Trainer is told nothing: it would set them
    without giving them back)."""
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on and accelerator == "cuda"  # fastest kernels per shape, found once
    if on and accelerator == "cuda":
        os.environ[CUBLAS_WORKSPACE[0]] = os.environ.get(CUBLAS_WORKSPACE[0]) or CUBLAS_WORKSPACE[1]


@contextmanager
def trial_flags(compiled: bool = False):
    """The process's flags as they were before the trial, once it ends (normally or not)."""
    saved = ProcessFlags.now()
    if compiled:
        torch._dynamo.reset()  # a new model's frames: no guards left from the last trial's to count against the limit
    try:
        yield
    finally:
        saved.restore()
        if compiled:
            torch._dynamo.reset()  # the trial's compiled graphs hold its model alive
