"""Ctrl-C, deferred to the next batch.

A SIGINT raises KeyboardInterrupt wherever the process happens to be, which may be halfway through an MLflow
or SQLite write; a half-written transaction can lock the store for every other worker. So while a trial (or
the study's worker loop) runs, Ctrl-C only sets `INTERRUPT`, and the interrupt is raised where it is safe:
between batches (`StopOnInterrupt`, Lightning then shuts the fit down) or between trials (`check_interrupt`).
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import pytorch_lightning as pl

__all__ = ["INTERRUPT", "deferred_interrupt", "check_interrupt", "StopOnInterrupt"]

INTERRUPT = threading.Event()  # set by Ctrl-C; the trial stops at its next batch


@contextmanager
def deferred_interrupt():
    """Ctrl-C asks for a stop at the next batch instead of raising wherever the process is."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
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
