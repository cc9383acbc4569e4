"""Ctrl-C and preemption signals, deferred to the next batch.

A signal's default action lands wherever the process happens to be, which may be halfway through an MLflow
or SQLite write; a half-written transaction can lock the store for every other worker. So while a trial (or
the study's worker loop) runs, SIGINT (Ctrl-C), SIGTERM (Kubernetes, `timeout`, most schedulers) and SIGUSR1
(Slurm's warning before the time limit, `--signal=USR1@90`) only set `INTERRUPT`; the stop is raised where
it is safe: after a training batch, once the trial's checkpoint is written (checkpoint.py), or between
trials (`check_interrupt`); a signal during validation lets it finish, so the epoch's result is not lost.
Ctrl-C raises KeyboardInterrupt, the other two `Preempted`, a KeyboardInterrupt too, so everything that ends
a run KILLED on Ctrl-C does so on preemption.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import pytorch_lightning as pl

from ablate.distributed import StopVote
from ablate.errors import Preempted

__all__ = ["INTERRUPT", "STOP_SIGNALS", "REQUEUE_EXIT_CODE", "Preempted", "deferred_interrupt", "check_interrupt",
           "interruption", "stop_exception", "StopOnInterrupt"]

INTERRUPT = threading.Event()  # set by a signal; the trial stops after its current batch
_SIGNAL: list[int] = []  # the signal that set INTERRUPT
_DEPTH = [0]  # nesting: a trial's deferral inside the study's keeps a stop asked for between trials
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# sysexits.h's EX_TEMPFAIL, "try again later": the exit code of a preempted `ablate run` (docs/faults.md: requeue on it)
REQUEUE_EXIT_CODE = 75


def stop_exception(signum: int) -> KeyboardInterrupt:
    """What a stop signal raises: Ctrl-C's KeyboardInterrupt, or Preempted('preempted (SIGTERM)')."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt("interrupted (Ctrl-C)")
    return Preempted(f"preempted ({signal.Signals(signum).name})", signum)


def interruption() -> KeyboardInterrupt:
    """The exception for the stop signal this process received (Ctrl-C's when none was recorded)."""
    return stop_exception(_SIGNAL[0] if _SIGNAL else signal.SIGINT)


@contextmanager
def deferred_interrupt():
    """The stop signals ask for a stop at the next batch instead of acting wherever the process is."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def request(signum, frame):
        if not INTERRUPT.is_set():
            _SIGNAL[:] = [signum]
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{what}: stopping after the current batch", file=sys.stderr, flush=True)
        INTERRUPT.set()

    if not _DEPTH[0]:  # a new command (in a notebook, after an interrupted one): no stop asked for yet
        INTERRUPT.clear()
        _SIGNAL.clear()
    # Lightning installs its own SIGTERM handler only where none is set: this one is
    previous = {s: signal.signal(s, request) for s in STOP_SIGNALS}
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_interrupt() -> None:
    if INTERRUPT.is_set():
        raise interruption()


class StopOnInterrupt(pl.Callback):
    """Where a requested stop lands in a trial without checkpoints: after a training batch (a durable trial's
    checkpoint.TrialCheckpoint stops it there itself, once saved); Lightning then shuts the fit down."""

    def __init__(self):
        self.vote = StopVote()

    def on_train_start(self, trainer, *args):
        self.vote.start(trainer)

    def on_train_batch_end(self, trainer, *args):
        if self.vote(trainer, INTERRUPT.is_set()):  # several ranks: rank 0 got the signal, all stop together
            raise interruption()
