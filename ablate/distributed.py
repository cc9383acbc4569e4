"""One trial on several devices (`train.devices: N`): Lightning's DDP, with the calling process as rank 0.

A study's worker owns the Optuna trial and the MLflow run, so it cannot be one of N identical copies of a script
(Lightning's own launcher re-runs the command line). Here rank 0 is the worker itself; it spawns ranks 1..N-1,
hands them the resolved trial config (and its checkpoint and resume point), and Lightning joins them through the
environment they are given (`LightningEnvironment`: LOCAL_RANK, MASTER_ADDR/PORT), as with an external launcher.
The followers train without tracking; what rank 0 decides (prune, stop on a signal) is broadcast so that every
rank stops at the same step. A rank that dies makes the others' next collective fail (gloo and NCCL see the closed
connection; `train.ddp_timeout_s` bounds any wait), so the trial fails instead of hanging, and a follower dies
with its rank 0.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import socket
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import torch

from ablate.errors import describe

__all__ = ["RankFailed", "StopVote", "world", "followers", "broadcast_decision"]

JOIN_S = 30  # seconds a finished rank 0 waits for its followers to exit before it kills them
VOTE_LAG = 2  # training steps between a stop vote's start and its reading, on every rank alike


class RankFailed(RuntimeError):
    """A follower rank of a multi-device trial failed or was killed: the trial fails with its reason."""


def broadcast_decision(trainer, decision: bool) -> bool:
    """Rank 0's decision, on every rank (one all-reduce of a flag; followers contribute False)."""
    if trainer.world_size == 1:
        return decision
    return bool(trainer.strategy.reduce_boolean_decision(decision and trainer.is_global_zero, all=False))


class StopVote:
    """Rank 0's stop after a batch (a signal), on every rank, without a host-device wait in the step.

    A blocking vote per batch (broadcast_decision) reads an all-reduced flag back to the host: on NCCL that stalls
    every step. Instead each batch starts an asynchronous all-reduce of its flag and a non-blocking copy of the result
    to the host, and reads the vote started `VOTE_LAG` batches earlier, which is long done: every rank reads the same
    vote at the same batch, so all stop together, at most VOTE_LAG batches after the signal. One device: no vote."""

    def __init__(self):
        self.slots: list[tuple] = []  # VOTE_LAG + 1 host copies (pinned on CUDA) with their numpy views
        self.events: list = []  # each slot's copy's CUDA event (None elsewhere)
        self.batch = 0

    def start(self, trainer) -> None:
        """Before the first batch (a callback's on_train_start): the host copies, whose numpy views read a vote
        without a tensor call."""
        if trainer.world_size > 1 and not self.slots:
            pinned = trainer.strategy.root_device.type == "cuda"
            hosts = [torch.zeros((), pin_memory=pinned) for _ in range(VOTE_LAG + 1)]
            self.slots, self.events = [(h, h.numpy()) for h in hosts], [None] * (VOTE_LAG + 1)

    def __call__(self, trainer, decision: bool) -> bool:
        if trainer.world_size == 1:
            return decision
        self.start(trainer)
        device = trainer.strategy.root_device
        flag = torch.full((), float(decision and trainer.is_global_zero), device=device)
        torch.distributed.all_reduce(flag, async_op=True).wait()  # NCCL: the stream waits, not the host
        slot = self.batch % len(self.slots)
        self.slots[slot][0].copy_(flag, non_blocking=device.type == "cuda")
        if device.type == "cuda":
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record()
        self.batch += 1
        if self.batch <= VOTE_LAG:
            return False
        oldest = self.batch % len(self.slots)  # the vote started VOTE_LAG batches ago, on every rank alike
        if self.events[oldest] is not None and not self.events[oldest].query():
            self.events[oldest].synchronize()  # the host ran VOTE_LAG steps ahead of the device: it waits anyway
        return bool(self.slots[oldest][1] > 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def world(devices: int) -> Iterator[dict[str, str]]:
    """The rendezvous of an N-rank trial on this machine: rank 0's environment for the trial, restored after."""
    threads = max(1, torch.get_num_threads() // devices)  # on CPU the ranks share the cores
    env = {"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": str(devices), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    saved_threads = torch.get_num_threads()
    os.environ.update(env)
    torch.set_num_threads(threads)
    try:
        yield env
    finally:
        torch.set_num_threads(saved_threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next trial sets up its own world


@contextmanager
def followers(env: dict[str, str], follow, *args) -> Iterator[None]:
    """Ranks 1..N-1 running `follow(*args)` for as long as rank 0's block runs; a follower's failure becomes
    RankFailed on rank 0 (its own exception, when rank 0 failed too, is the consequence, not the cause)."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch threads or CUDA state
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_follower, args=(env | {"LOCAL_RANK": str(r)}, errors, follow, args), daemon=True)
             for r in range(1, int(env["WORLD_SIZE"]))]
    for p in procs:
        p.start()
    try:
        yield
    except BaseException as e:
        _reap(procs, timeout=5)
        failed = _failures(procs, errors)
        if failed and not isinstance(e, KeyboardInterrupt):
            raise RankFailed(failed) from e
        raise
    _reap(procs, timeout=JOIN_S)
    failed = _failures(procs, errors)
    if failed:
        raise RankFailed(failed)


def _reap(procs, timeout: float) -> None:
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():  # stuck in a collective rank 0 has left
            p.kill()
            p.join()


def _failures(procs, errors) -> str:
    reasons = {}
    while not errors.empty():
        rank, reason = errors.get()
        reasons[rank] = reason
    lines = []
    for r, p in enumerate(procs, start=1):
        if p.exitcode == 0:
            continue
        how = reasons.get(r) or (f"killed by {signal.Signals(-p.exitcode).name}" if p.exitcode and p.exitcode < 0
                                 else f"exit code {p.exitcode}")
        lines.append(f"rank {r} failed: {how}")
    return "; ".join(lines)


def _follower(env: dict[str, str], errors, follow, args) -> None:
    """A follower rank: rank 0 takes the signals (it checkpoints and broadcasts the stop), and its death ends us."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: killed with rank 0 rather than waiting on it
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    os.environ.update(env)
    try:
        follow(*args)
    except BaseException as e:  # noqa: BLE001 (whatever it was, rank 0 reports it)
        errors.put((int(env["LOCAL_RANK"]), describe(e)))
        traceback.print_exc()
        sys.exit(1)
