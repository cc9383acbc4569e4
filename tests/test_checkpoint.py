"""Trial checkpoints in this process: written atomically, loaded only into the configuration that wrote them, a
full disk fails only its trial, a stopped searched trial is queued again and resumed, `ablate train` resumes, a
checkpoint whose pickle would run code is never unpickled."""
import os
import pickle
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import TINY_BASE, load, runs, write_study
from optuna.trial import TrialState

import ablate.train
from ablate import interrupt
from ablate.checkpoint import (
    CHECKPOINT,
    AtomicCheckpointIO,
    CheckpointWriteError,
    config_digest,
    resume_point,
    single_checkpoint,
)
from ablate.config import TrialConfig, load_trial
from ablate.train import run_trial

EPOCHS = 3


def tiny(**train) -> TrialConfig:
    return TrialConfig.model_validate(TINY_BASE | {"train": {"epochs": EPOCHS, "progress_bar": False, **train}})


class StopAt(pl.Callback):
    """Ask for a stop (as a signal handler does) at the start of `epoch`."""

    def __init__(self, epoch: int, signum=signal.SIGINT):
        self.epoch, self.signum = epoch, signum

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            interrupt._SIGNAL[:] = [self.signum]
            interrupt.INTERRUPT.set()


@pytest.fixture(autouse=True)
def _no_stop_left_over():
    yield
    interrupt.INTERRUPT.clear()


def full_disk(checkpoint: Path) -> None:
    """The next write of `checkpoint` meets a full disk: its temp file is /dev/full (writes fail with ENOSPC)."""
    checkpoint.with_name(checkpoint.name + ".tmp").symlink_to("/dev/full")


def stopped_trial(tmp_path, cfg, epoch=1):
    """A checkpoint written by `cfg`'s trial, stopped after the first batch of `epoch`."""
    path = tmp_path / "ck" / CHECKPOINT
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, callbacks=[StopAt(epoch)], checkpoint=path)
    interrupt.INTERRUPT.clear()
    return path


def test_a_checkpoint_is_loaded_only_into_the_configuration_that_wrote_it(tmp_path, capsys):
    path = stopped_trial(tmp_path, tiny())
    assert resume_point(path, tiny(progress_bar=True)).epoch == 1  # how it runs is not what it computes
    capsys.readouterr()
    assert resume_point(path, tiny(lr=0.01)) is None
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"ablate: checkpoint {path} was written by another configuration: moved to "
                           f"{CHECKPOINT}.other-config-") and not path.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="a full disk is simulated with /dev/full (Linux)")
def test_a_write_to_a_full_disk_keeps_the_previous_checkpoint_and_names_the_error(tmp_path):
    path = tmp_path / CHECKPOINT
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)
    full_disk(path)
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {path}: No space left on device "
                                                    r"\(the previous checkpoint is kept\)"):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(2**20)}, path)
    assert torch.load(path) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="a full disk is simulated with /dev/full (Linux)")
def test_a_full_disk_fails_that_trial_only_and_its_last_checkpoint_resumes_it(tmp_path, run_cli, monkeypatch):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]},
                       base=TINY_BASE | {"train": {"epochs": EPOCHS, "progress_bar": False}})
    real, saves = AtomicCheckpointIO.save_checkpoint, []

    def second_save_of_trial_1_fails(self, checkpoint, file, *args, **kwargs):
        saves.append(checkpoint["ablate"]["trial"])
        if saves.count(1) == 2:
            full_disk(Path(file))  # the kernel's own ENOSPC, through the real write
        return real(self, checkpoint, file, *args, **kwargs)

    with monkeypatch.context() as patch:  # (not monkeypatch.undo: it would undo the test's chdir too)
        patch.setattr(AtomicCheckpointIO, "save_checkpoint", second_save_of_trial_1_fails)
        proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = load().trials
    assert first.state == TrialState.COMPLETE  # the earlier result is kept
    assert second.state == TrialState.FAIL and second.user_attrs["fail_reason"].startswith(
        "CheckpointWriteError: [Errno 28] cannot write checkpoint ") and second.user_attrs["fail_reason"].endswith(
        "No space left on device (the previous checkpoint is kept)")
    assert "trial 1 fail (CheckpointWriteError" in proc.stdout

    again = run_cli("run", path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert load().trials[2].user_attrs["resumed"] == {"trial": 1, "epoch": 1}  # from the save that worked


def test_a_stopped_searched_trial_is_queued_again_with_its_params_and_resumed(tmp_path, run_cli, monkeypatch):
    path = write_study(tmp_path / "search.yaml", study={"name": "search", "sampler": "random", "trials": 2,
                                                         "seeds": [0, 1], "confirm": {"top": 0}},  # stops only
                       base=TINY_BASE | {"train": {"epochs": EPOCHS, "progress_bar": False}},
                       space={"model.attention.name": ["se", "eca", "cbam"], "train.lr": {"low": 0.01, "high": 0.1}})
    real = ablate.train.make_trainer
    with monkeypatch.context() as patch:
        patch.setattr(ablate.train, "make_trainer", lambda cfg, callbacks=(): real(cfg, [StopAt(1), *callbacks]))
        stopped = run_cli("run", path)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    [first] = load("search").trials

    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = load("search")
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["resumed"] == {"trial": 0, "epoch": 1}
    assert retry.params == first.params and retry.user_attrs["seed"] == first.user_attrs["seed"]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "[search] trial 1 complete (resumed at epoch 1) | 1/2 done, 0 pruned, 0 failed" in proc.stdout


def test_force_new_sets_the_stopped_trials_checkpoints_aside_with_the_study(tmp_path, run_cli, monkeypatch):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]},
                       base=TINY_BASE | {"train": {"epochs": EPOCHS, "progress_bar": False}})
    real = ablate.train.make_trainer
    with monkeypatch.context() as patch:
        patch.setattr(ablate.train, "make_trainer", lambda cfg, callbacks=(): real(cfg, [StopAt(1), *callbacks]))
        assert run_cli("run", path).returncode == 130

    proc = run_cli("run", path, "--force-new")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumes at epoch" not in proc.stdout  # started over: nothing resumed from the old study
    [aside] = (tmp_path / "mlruns" / "checkpoints").glob("tiny.before-*")
    assert list(aside.rglob(CHECKPOINT)) and load(aside.name).trials[0].state == TrialState.FAIL


def test_ablate_train_preempted_exits_75_and_the_same_command_resumes(tmp_path, run_cli, monkeypatch):
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(TINY_BASE | {"train": {"epochs": EPOCHS,
                                                                               "progress_bar": False}}))
    real = ablate.train.make_trainer
    with monkeypatch.context() as patch:
        patch.setattr(ablate.train, "make_trainer",
                      lambda cfg, callbacks=(): real(cfg, [StopAt(2, signal.SIGTERM), *callbacks]))
        proc = run_cli("train", "trial.yaml")
    assert proc.returncode == 75
    assert "ablate: preempted (SIGTERM): the trial's checkpoint is saved; resume with: ablate train trial.yaml" \
        in proc.stderr and "Traceback" not in proc.stderr
    [killed] = runs("ablate")
    assert killed.info.status == "KILLED" and killed.data.tags["reason"] == "preempted (SIGTERM)"

    again = run_cli("train", "trial.yaml")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming at epoch 2 from " in again.stdout
    assert not list((tmp_path / "mlruns" / "checkpoints").rglob(CHECKPOINT))


class RunsCode:
    """What an attacker pickles into a checkpoint: unpickling it calls os.system (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted(path: Path, cfg: TrialConfig, marker: Path) -> None:
    """A checkpoint that looks like `cfg`'s own (its digest, epoch 1) and runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ablate": {"digest": config_digest(cfg), "epoch": 1, "run_id": None, "trial": None},
                "state_dict": RunsCode(marker)}, path)


def test_a_checkpoint_whose_pickle_would_run_code_is_moved_aside_unloaded_and_the_trial_starts_over(tmp_path, run_cli):
    shared = tmp_path / "shared"  # train.checkpoint_dir: a folder other users can write
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(TINY_BASE | {"train": {
        "epochs": EPOCHS, "progress_bar": False, "checkpoint_dir": str(shared)}}))
    path, marker = single_checkpoint(load_trial("trial.yaml")), tmp_path / "code-ran"
    planted(path, load_trial("trial.yaml"), marker)

    proc = run_cli("train", "trial.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()  # never unpickled
    [line] = [x for x in proc.stderr.splitlines() if "checkpoint" in x]
    assert line.startswith(f"ablate: checkpoint {path} holds posix.system, which the safe loader refuses to load "
                           f"(code, not data): moved to {CHECKPOINT}.unsafe-") and line.endswith("from epoch 0")
    assert "resuming" not in proc.stdout  # from scratch, to the end
    [finished] = runs("ablate")
    assert finished.info.status == "FINISHED" and "ablate.resumed_at_epoch" not in finished.data.tags
    [aside] = path.parent.iterdir()  # kept for a look, never loaded again
    assert aside.name.startswith(f"{CHECKPOINT}.unsafe-")


@pytest.mark.parametrize("devices", [1, 2])  # every rank of a multi-device trial loads the checkpoint too
def test_lightning_resumes_through_the_safe_loader_whatever_its_caller_asks(tmp_path, devices):
    path, marker = tmp_path / CHECKPOINT, tmp_path / "code-ran"  # swapped in after resume_point read a good one
    planted(path, tiny(), marker)
    io = ablate.train.make_trainer(tiny(devices=devices, accelerator="cpu").train).strategy.checkpoint_io
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL posix.system"):
        io.load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_everything_a_resume_needs_round_trips_through_the_safe_loader(tmp_path):
    cfg = tiny(mixup=0.2, ema=True, ema_decay=0.9, optimizer="adamw", val_every=0.5)  # numpy's RNG draws mixup
    path = stopped_trial(tmp_path, cfg)
    saved = torch.load(path, weights_only=True)
    assert {"state_dict", "loops", "callbacks", "optimizer_states", "lr_schedulers", "ablate"} <= saved.keys()
    resume = resume_point(path, cfg)
    assert resume.epoch == 1 and run_trial(cfg, checkpoint=path, resume=resume).status == "FINISHED"
