"""A trial's steady steps never make the host wait for the device, and a trial gives back the process's flags.

A host-device synchronisation is a tensor call that needs the device's result on the host (`item`, `bool(t)`,
`tolist`, `.cpu()`, `nonzero` ...). On a CPU nothing waits, but the calls are the same ones that stall a GPU, so a
TorchFunctionMode counts them (on a GPU torch.cuda.set_sync_debug_mode("error") watches too) inside the steady part
of an epoch: every training batch after the first (its fetch, step, backward, optimizer and EMA update, callbacks) and
every validation batch after the first. The epoch's end (metrics computed, the divergence check, a checkpoint) is
where reading back is allowed.
"""
import collections
import os
import random
import traceback

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.overrides import TorchFunctionMode

from ablate.config import parse_trial
from ablate.train import DivergedError, run_trial

SYNCING = {"item", "__bool__", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__", "nonzero",
           "__array__", "is_nonzero", "equal", "allclose", "__repr__", "__format__", "unique", "masked_select",
           "bincount", "argwhere", "repeat_interleave", "_unique", "_unique2", "unique_consecutive"}

HOST_ONLY = os.path.join("torch", "utils", "data", "")


class CountSyncs(TorchFunctionMode):
    def __init__(self, seen: collections.Counter):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        stack = traceback.extract_stack()[:-1]
        # not `.to(device)`: Lightning moves logged metrics to the module's own device, a no-op; not the DataLoader's
        # own host tensors (a new iterator's seed draw, when a validation starts inside the epoch)
        if name in SYNCING and HOST_ONLY not in stack[-1].filename:
            where = [f"{f.filename}:{f.lineno}" for f in stack][-3:]
            self.seen[f"{name} at {' < '.join(reversed(where))}"] += 1
        return func(*args, **(kwargs or {}))


class SteadySteps(pl.Callback):
    """Counts inside batches 2..N of every training and validation epoch."""

    def __init__(self):
        self.seen, self.mode, self.windows = collections.Counter(), None, 0

    def _close(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(0)

    def _open_unless_last(self, index, count):
        if index < count - 1:
            self.mode = CountSyncs(self.seen)
            self.mode.__enter__()
            self.windows += 1
            if torch.cuda.is_available():  # on a GPU (benchmarks/gpu_check.sh) the device says it too
                torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._close()
        self._open_unless_last(batch_idx, trainer.num_training_batches)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self._close()
        self._open_unless_last(batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_validation_start(self, trainer, module):
        self._close()  # a validation inside the epoch: its start reads back on purpose

    def on_train_epoch_end(self, trainer, module):
        self._close()

    def on_exception(self, trainer, module, exception):
        self._close()  # a failed trial's teardown moves the model back to the CPU, after the steps


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def trial(uri, **train):
    return parse_trial({
        "model": {"backbone": "resnet10_narrow"},
        "data": {"name": "synthetic", "image_size": 16, "batch_size": 8, "train_size": 48, "val_size": 32},
        "train": {"epochs": 2, "progress_bar": False, **train}, "tracking": {"uri": uri, "log_weights": False}})


@pytest.mark.parametrize("tricks", [{}, {"ema": True, "mixup": 0.2, "cutmix": 1.0},
                                    {"channels_last": True, "label_smoothing": 0.1, "val_every": 0.5},
                                    {"devices": 2, "accelerator": "cpu"}],
                         ids=["default", "ema+mixup", "channels_last+smoothing+twice-validated", "two-devices"])
def test_no_step_waits_for_the_device(uri, tricks):
    steady = SteadySteps()
    result = run_trial(trial(uri, **tricks), callbacks=[steady])
    assert steady.windows >= 2 * (5 + 3) / tricks.get("devices", 1)  # 6 + 4 batches an epoch (a rank's share)
    assert not steady.seen, dict(steady.seen)
    assert np.isfinite(result.metrics["train/loss"]) and "val/acc1" in result.metrics


class PoisonAt(pl.Callback):
    """NaN in every weight before training batch `batch` of epoch 1."""

    def __init__(self, batch):
        self.batch = batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == self.batch:
            for p in module.model.parameters():
                p.data.fill_(float("nan"))


def test_divergence_found_without_a_sync_still_names_its_step(uri):
    steady = SteadySteps()
    with pytest.raises(DivergedError, match=r"train/loss is nan at epoch 1, step 9$"):
        run_trial(trial(uri), callbacks=[PoisonAt(3), steady])  # 6 steps per epoch: epoch 1's 4th is step 9
    assert not steady.seen, dict(steady.seen)


def test_a_trial_gives_the_process_its_flags_back(uri):
    """A notebook's choices survive a trial: torch's determinism and cudnn flags, matmul precision, the RNGs and
    the environment Lightning's seeding writes."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    torch.set_float32_matmul_precision("medium")
    os.environ.pop("PL_GLOBAL_SEED", None)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    seen = {}

    class During(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
    try:
        run_trial(trial(uri, epochs=1), callbacks=[During()])
        assert seen["deterministic"]  # on a CPU a trial is deterministic by default (exact resume)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert torch.get_float32_matmul_precision() == "medium"
        assert "PL_GLOBAL_SEED" not in os.environ
        assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    finally:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")


def test_determinism_is_a_train_key(uri):
    seen = {}

    class During(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["on"] = torch.are_deterministic_algorithms_enabled()
    run_trial(trial(uri, epochs=1, deterministic=False), callbacks=[During()])
    assert seen["on"] is False
    run_trial(trial(uri, epochs=1, deterministic=True), callbacks=[During()])
    assert seen["on"] is True


@pytest.fixture
def dynamo_eager(monkeypatch):
    """torch.compile through dynamo's capture with the eager backend: the recompile limit is dynamo's, and inductor's
    code generation would cost a minute per model on 2 cores. A limit of 1 makes the second model the first too many."""
    import torch._dynamo

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager"))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_trials_in_one_worker_never_fall_back_to_eager(uri, dynamo_eager):
    """Each trial builds a new model: without a reset the second architecture meets the first one's guards and,
    past the recompile limit, runs eager for the rest of the worker's life."""
    from torch._dynamo.utils import counters

    compiled = []
    for module in ("none", "se", "eca", "se"):
        before = counters["stats"]["unique_graphs"]
        cfg = trial(uri, epochs=1, compile=True, limit_val_batches=1)
        cfg.model.attention.name = module
        run_trial(cfg)
        compiled.append(counters["stats"]["unique_graphs"] > before)
    assert compiled == [True] * 4


def test_compile_takes_torch_compile_modes(uri):
    cfg = trial(uri, compile="reduce-overhead")
    assert cfg.train.compile == "reduce-overhead"
    with pytest.raises(Exception, match="max-autotune"):
        trial(uri, compile="fastest")
