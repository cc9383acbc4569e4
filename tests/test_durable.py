"""Durable trials, driven on real processes: a trial killed (SIGKILL) or preempted (SIGTERM, SIGUSR1) part-way
through an epoch resumes from its checkpoint when the same command runs again, and ends with the result the
uninterrupted trial gets, to 1e-6; each metric has one value per epoch; the stopped trial is not counted failed.

The moment is reached with a `--plugin` that pauses training at a chosen epoch and batch until the test acts
(the same trick the fault tests use), so the kill lands mid-epoch, not where the timer happens to be.
"""
import signal

import mlflow
import pytest
import torch
from helpers import TINY_BASE, ablate, load, runs, start, write_study
from optuna.trial import TrialState
from test_faults import wait_for

from ablate.checkpoint import CHECKPOINT
from ablate.report import ablation_table

PAUSE_PLUGIN = '''
"""Pause training at epoch $PAUSE_EPOCH, batch $PAUSE_BATCH of the first trial: write $PAUSE_MARK, then wait for a
stop signal (training goes on once one arrives) or to be killed."""
import os, pathlib, time

import ablate.interrupt, ablate.train

EPOCH, BATCH = int(os.environ["PAUSE_EPOCH"]), int(os.environ["PAUSE_BATCH"])
MARK = pathlib.Path(os.environ["PAUSE_MARK"])
real = ablate.train.TrialModule.training_step


def training_step(self, batch, batch_idx):
    if self.current_epoch == EPOCH and batch_idx == BATCH and not MARK.exists():
        MARK.write_text("paused")
        while not ablate.interrupt.INTERRUPT.is_set():
            time.sleep(0.05)
    return real(self, batch, batch_idx)


ablate.train.TrialModule.training_step = training_step
'''

EPOCHS, PAUSE_EPOCH, PAUSE_BATCH = 3, 1, 2  # 4 batches an epoch: stopped half-way through the second epoch
# every stream a resume must restore: mixup (numpy), drop path (torch), crop/flip (the datamodule's), EMA
RECIPE = {"model": TINY_BASE["model"] | {"drop_path_rate": 0.1},
          "data": TINY_BASE["data"] | {"train_size": 64, "hflip": 0.5},
          "train": {"epochs": EPOCHS, "progress_bar": False, "mixup": 0.2, "ema": True, "ema_decay": 0.9}}
PER_EPOCH = ("val/acc1", "val/loss", "val/loss_ema", "val/acc1_best", "train/loss", "train/lr")


def one_cell(folder):
    return write_study(folder / "tiny.yaml", study={"name": "tiny", "seeds": [0]}, base=RECIPE,
                       space={"model.attention.name": ["se"]})


def finished_run(folder=None):
    [run] = [r for r in runs(folder=folder) if r.info.status == "FINISHED" and "optuna.trial" in r.data.tags]
    return run


def histories(run, folder):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                    key=lambda m: m.step)] for key in PER_EPOCH}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The trial run to its end without a stop: the result every resumed trial must reproduce."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    proc = ablate("run", str(one_cell(folder)), cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return histories(finished_run(folder), folder)


def stop_mid_epoch(tmp_path, how):
    """Start the one-cell study, pause it mid-epoch, stop it with `how`; returns (process, its stderr)."""
    path = one_cell(tmp_path)
    (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)
    mark = tmp_path / "paused"
    proc = start("run", str(path), "--plugin", "pause", env={"PAUSE_EPOCH": str(PAUSE_EPOCH),
                                                              "PAUSE_BATCH": str(PAUSE_BATCH), "PAUSE_MARK": str(mark)})
    wait_for(mark.exists, proc, "the pause mid-epoch")
    proc.send_signal(how)
    out, err = proc.communicate(timeout=300)
    return proc, out + err


def checkpoints(folder):
    return sorted((folder / "mlruns" / "checkpoints" / "tiny").rglob(f"{CHECKPOINT}*"))


def assert_resumed_like_uninterrupted(tmp_path, uninterrupted, at_epoch):
    proc = ablate("run", str(tmp_path / "tiny.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"trial 1 (attention=se, seed 0) resumes at epoch {at_epoch} from trial 0's checkpoint" in proc.stdout
    assert f"trial 1 complete (resumed at epoch {at_epoch})" in proc.stdout
    stopped, resumed = load().trials
    assert stopped.state == TrialState.FAIL and resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed"] == {"trial": 0, "epoch": at_epoch}

    run = finished_run()
    assert run.data.tags["ablate.resumed_at_epoch"] == str(at_epoch)
    earlier = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(
        run.data.tags["ablate.resumed_from_run"])
    assert earlier.data.tags["ablate.resumed_by"] == run.info.run_id and earlier.info.status != "RUNNING"
    got = histories(run, tmp_path)
    for key in PER_EPOCH:  # one value per epoch, each the uninterrupted trial's
        assert [s for s, _ in got[key]] == list(range(EPOCHS)), (key, got[key])
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in uninterrupted[key]], abs=1e-6), key
    assert not checkpoints(tmp_path)  # deleted once the trial finished

    table = ablation_table("tiny").frame
    assert table.loc["attention=se", ["n", "failed", "pruned"]].tolist() == [1, 0, 0]  # stopped != failed


def test_a_trial_killed_mid_epoch_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, uninterrupted):
    proc, _ = stop_mid_epoch(tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    [saved] = checkpoints(tmp_path)  # the end of epoch 0: a kill writes nothing
    assert torch.load(saved, weights_only=True)["ablate"]["epoch"] == PAUSE_EPOCH
    assert_resumed_like_uninterrupted(tmp_path, uninterrupted, at_epoch=PAUSE_EPOCH)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_preempted_trial_checkpoints_its_batch_exits_75_and_resumes_to_the_uninterrupted_result(
        tmp_path, uninterrupted, how):
    proc, output = stop_mid_epoch(tmp_path, how)
    name = signal.Signals(how).name
    assert proc.returncode == 75, output[-2000:]  # EX_TEMPFAIL: requeue me
    assert f"ablate: preempted ({name}): the running trials' checkpoints are saved; resume with: ablate run" in output
    assert "Traceback" not in output

    [stopped] = load().trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == f"preempted ({name})"
    statuses = {r.data.tags.get("optuna.trial", "parent"): (r.info.status, r.data.tags.get("reason")) for r in runs()}
    assert statuses == {"parent": ("KILLED", f"preempted ({name})"), "0": ("KILLED", f"preempted ({name})")}
    [saved] = checkpoints(tmp_path)
    meta = torch.load(saved, weights_only=True)["ablate"]
    assert meta["mid_epoch"] and meta["epoch"] == PAUSE_EPOCH  # written after the batch the signal came in

    assert_resumed_like_uninterrupted(tmp_path, uninterrupted, at_epoch=PAUSE_EPOCH)


def test_a_truncated_checkpoint_is_reported_moved_aside_and_the_trial_starts_over(tmp_path, uninterrupted):
    stop_mid_epoch(tmp_path, signal.SIGKILL)
    [saved] = checkpoints(tmp_path)
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])

    proc = ablate("run", str(tmp_path / "tiny.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = [x for x in proc.stderr.splitlines() if "checkpoint" in x]
    assert line.startswith(f"ablate: checkpoint {saved} is unreadable (") and "the trial starts from epoch 0" in line
    assert "resumes at epoch" not in proc.stdout and load().trials[1].user_attrs["resumed"] is None
    [aside] = checkpoints(tmp_path)
    assert aside.name.startswith(f"{CHECKPOINT}.corrupt-")  # kept for a look, never loaded again
    got = histories(finished_run(), tmp_path)  # from scratch: the uninterrupted trial again
    assert [v for _, v in got["val/loss"]] == pytest.approx([v for _, v in uninterrupted["val/loss"]], abs=1e-6)


def test_sigterm_to_a_two_worker_study_stops_both_trials_and_the_rerun_resumes_both(tmp_path):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]},
                       base=TINY_BASE | {"train": {"epochs": 30, "progress_bar": False}})
    proc = start("run", str(path), "--jobs", "2")

    def both_past_epoch_0():
        return len([r for r in runs() if "val/acc1" in r.data.metrics and r.info.status == "RUNNING"]) == 2

    wait_for(both_past_epoch_0, proc, "two trials past their first epoch")
    proc.send_signal(signal.SIGTERM)  # to the parent only, as `timeout` and Kubernetes send it
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert {t.user_attrs["fail_reason"] for t in load().trials} == {"preempted (SIGTERM)"}
    assert len(checkpoints(tmp_path)) == 2

    resumed = ablate("run", str(path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = load().get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(t.user_attrs["resumed"]["epoch"] >= 1 for t in done)
