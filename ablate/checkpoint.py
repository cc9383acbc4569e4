"""Durable trials: Lightning's checkpoint of a running trial, so that a killed, crashed or preempted trial
resumes where it stopped instead of from epoch 0.

When: at the end of every `train.checkpoint_every`-th epoch (not after the last: the trial is then done), and
after the training batch in which a stop signal arrived (interrupt.py). Where: one file per cell x seed,
`<root>/<study>/<cell key digest>/<seed>/last.ckpt`, the root being `train.checkpoint_dir`, else a
`checkpoints` folder beside the SQLite tracking store (mlruns/checkpoints by default). Each save replaces the
file atomically (temp file, fsync, os.replace: a kill during the write leaves the previous checkpoint), and the
file is deleted once the trial finishes or is pruned (its weights stay as the run's model.pt).

What: everything Lightning saves (weights, EMA, optimizer, scheduler, loop progress, the datamodule's shuffle
and augmentation streams), the process's RNG states (mixup, dropout, drop path) and, under `ablate`, the digest
of the configuration that wrote it, the trial and MLflow run, and the epochs it holds. A checkpoint is loaded
only into a configuration with the same digest; an unreadable one is moved aside, and the trial starts over.

A checkpoint is data: it may sit in a shared folder others can write, so it holds only what torch's safe loader
(torch.load(weights_only=True)) accepts, tensors, numbers, strings, lists, tuples and dicts (numpy's RNG state is
stored as a tensor), and is only ever read with it, here and in Lightning's resume (AtomicCheckpointIO). A file the
safe loader refuses (a pickle that would import or call anything) is moved aside as `*.unsafe-<time>`, never
unpickled, and the trial starts over.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ablate import tracking
from ablate.config import TrialConfig, flatten, keys_with_effect
from ablate.distributed import StopVote
from ablate.errors import one_line
from ablate.interrupt import INTERRUPT, interruption
from ablate.spec import cell_digest

__all__ = ["CHECKPOINT", "CheckpointWriteError", "Resume", "AtomicCheckpointIO", "TrialCheckpoint",
           "config_digest", "checkpoint_root", "cell_checkpoint", "single_checkpoint", "resume_point", "remove"]

CHECKPOINT = "last.ckpt"
# keys that change how a trial runs or is recorded, not what it computes: a checkpoint resumes across them
RESUMABLE_ACROSS = keys_with_effect(TrialConfig, "run", "record")  # each field says its effect


class CheckpointWriteError(OSError):
    """The checkpoint could not be written (a full disk): the trial fails, its previous checkpoint is kept."""


@dataclass
class Resume:
    """A usable checkpoint: where training continues and who wrote it."""
    path: Path
    epoch: int  # the epoch training continues in (0-based, as MLflow steps count): the epochs before it are done
    run_id: str | None  # the MLflow run of the trial that wrote it
    trial: int | None  # that trial's Optuna number (None for `ablate train`)


def config_digest(cfg: TrialConfig) -> str:
    """What a checkpoint must match to be loaded: the resolved config, less how it runs and is recorded."""
    kept = {k: v for k, v in flatten(cfg).items() if not k.startswith(RESUMABLE_ACROSS)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_root(cfg: TrialConfig) -> Path:
    if cfg.train.checkpoint_dir:
        return Path(cfg.train.checkpoint_dir).expanduser().resolve()
    return tracking.home(cfg.tracking.uri) / "checkpoints"  # (creates nothing: bad input must leave no folder)


def cell_checkpoint(cfg: TrialConfig, study: str, key: str, seed: int) -> Path:
    """A study trial's file: its cell key (digested: keys are JSON) and seed say which, across trials."""
    return checkpoint_root(cfg) / study / cell_digest(key) / str(seed) / CHECKPOINT


def single_checkpoint(cfg: TrialConfig) -> Path:
    """An `ablate train` trial's file: the same config run again resumes it."""
    return checkpoint_root(cfg) / "train" / config_digest(cfg)[:16] / CHECKPOINT


def _set_aside(path: Path, why: str, suffix: str) -> None:
    aside = path.with_name(f"{path.name}.{suffix}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    os.replace(path, aside)
    print(f"ablate: checkpoint {path} {why}: moved to {aside.name}; the trial starts from epoch 0",
          file=sys.stderr, flush=True)


def _refused_global(e: Exception) -> str | None:
    """What the safe loader refused to import or call, when that is why the load failed (else None: corrupt)."""
    if not isinstance(e, pickle.UnpicklingError) or "Weights only load failed" not in str(e):
        return None
    found = re.search(r"GLOBAL (\S+)", str(e))  # torch's message names the import it refused
    return found.group(1) if found else "an object"


def resume_point(path: Path | None, cfg: TrialConfig) -> Resume | None:
    """The checkpoint at `path` if the safe loader reads it and this configuration wrote it, else None (after
    moving a bad one aside, with one line saying why)."""
    if path is None or not path.is_file():
        return None
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)["ablate"]  # data only, never a call
        epoch = int(meta["epoch"])
    except Exception as e:  # noqa: BLE001 (truncated, corrupt, not a checkpoint: all mean "unusable")
        refused = _refused_global(e)
        if refused is not None:  # never unpickled: what it would have run did not run
            _set_aside(path, f"holds {refused}, which the safe loader refuses to load (code, not data)", "unsafe")
            return None
        _set_aside(path, f"is unreadable ({type(e).__name__}: {one_line(e, 120)})", "corrupt")
        return None
    if meta.get("digest") != config_digest(cfg):
        _set_aside(path, "was written by another configuration", "other-config")
        return None
    return Resume(path, epoch, meta.get("run_id"), meta.get("trial"))


def remove(path: Path | None) -> None:
    """The trial is over: its checkpoint goes, and the folders it leaves empty."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):  # seed, cell, study
        try:
            folder.rmdir()
        except OSError:  # not empty (files set aside are kept) or already gone
            break


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, into a temp file that replaces the checkpoint only once it is complete on disk;
    Lightning's resume reads it back through the safe loader, whatever weights_only its caller passed."""

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict[str, Any]:
        # the file may have been replaced since resume_point read it: this load is safe on its own
        return super().load_checkpoint(path, map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before it replaces the previous checkpoint
            os.replace(tmp, path)
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)  # the rename itself survives a power loss
            finally:
                os.close(folder)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            kept = "the previous checkpoint is kept" if path.exists() else "no earlier checkpoint"
            raise CheckpointWriteError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e} ({kept})") from None


class TrialCheckpoint(Checkpoint):
    """Saves the trial's checkpoint at epoch ends and after the batch a stop signal arrived in (then stops the
    trial), and restores the RNG states a checkpoint holds just before training resumes.

    A Lightning `Checkpoint`, so its epoch-end hook runs after the module's (which resets the epoch's metrics)."""

    def __init__(self, path: Path, every: int, owner: dict[str, Any]):
        self.path, self.every, self.owner = path, every, owner  # owner: digest, run_id, trial
        self._mid_epoch, self._rng = False, None
        self.vote = StopVote()

    def on_train_epoch_end(self, trainer, module):
        done = trainer.current_epoch + 1
        if self.every and done % self.every == 0 and done < trainer.max_epochs:
            self._save(trainer, mid_epoch=False)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.vote(trainer, INTERRUPT.is_set()):  # several ranks: rank 0 got the signal, all stop together
            self._save(trainer, mid_epoch=True)
            raise interruption()  # Lightning then shuts the fit down

    def _save(self, trainer, mid_epoch: bool) -> None:
        self._mid_epoch = mid_epoch
        trainer.save_checkpoint(self.path)

    def on_save_checkpoint(self, trainer, module, checkpoint):
        epoch = trainer.current_epoch + (0 if self._mid_epoch else 1)
        checkpoint["ablate"] = {**self.owner, "epoch": epoch, "mid_epoch": self._mid_epoch}

    def state_dict(self) -> dict:
        rng = _collect_rng_states(include_cuda=torch.cuda.is_available())
        kind, keys, *rest = rng["numpy"]  # its key array is the one part the safe loader refuses: as a tensor
        return {"rng": rng | {"numpy": (kind, torch.from_numpy(keys.astype(np.int64)), *rest)}}

    def load_state_dict(self, state: dict) -> None:
        kind, keys, *rest = state["rng"]["numpy"]
        self._rng = state["rng"] | {"numpy": (kind, keys.numpy().astype(np.uint32), *rest)}

    def on_train_start(self, trainer, module):
        self.vote.start(trainer)
        if self._rng is not None:  # as late as possible: nothing between here and the next batch draws
            _set_rng_states(self._rng)
            self._rng = None
