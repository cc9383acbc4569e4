"""One trial on two devices (train.devices: 2): DDP on CPU with the gloo backend, two real processes.

Rank 0 is the study's worker (it owns the Optuna trial and the MLflow run), rank 1 a process it spawns with the
trial's config. What a user relies on: one trial and one run per cell, each metric once per epoch; a prune and a
stop reach every rank; a rank that dies fails the trial within seconds instead of hanging the other.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_BASE, ablate, cli_env, load, runs, start, write_study
from optuna.trial import TrialState

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")

TWO_RANKS = {"epochs": 2, "progress_bar": False, "devices": 2, "accelerator": "cpu"}
# 64 samples in batches of 16: 4 steps an epoch, each rank training on 8 images of every batch
BASE = {**TINY_BASE, "data": {**TINY_BASE["data"], "train_size": 64, "val_size": 15}, "train": TWO_RANKS}


def test_a_two_device_trial_is_one_optuna_trial_and_one_run_with_each_metric_once_per_epoch(tmp_path):
    path = write_study(tmp_path / "tiny.yaml", base=BASE, study={"name": "tiny", "seeds": [0]})
    proc = ablate("run", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    study = load()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # none and se, one trial each
    children = [r for r in runs() if r.data.tags.get("ablate.role") != "study"]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    client = __import__("mlflow").MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for run in children:
        for metric in ("train/loss", "val/loss", "val/acc1", "train/throughput"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == [0, 1], (metric, steps)  # rank 1 logs nothing, rank 0 once per epoch
        # every rank's share of the 15 validation images is counted: accuracy is a multiple of 1/15
        acc = run.data.metrics["val/acc1"] * 15
        assert abs(acc - round(acc)) < 1e-4


PRUNE_SCRIPT = '''
import multiprocessing, sys, time
import optuna
from ablate.config import parse_trial
from ablate.study import PruningCallback
from ablate.train import run_trial

if __name__ == "__main__":
    base = eval(sys.argv[1])
    base["train"]["epochs"] = 50
    # a real Optuna trial whose pruner prunes at the first report (accuracy is never above 1.1)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    trial = study.ask()
    started = time.time()
    try:
        run_trial(parse_trial(base), callbacks=[PruningCallback(trial, "val/acc1")],
                  killed_by=(optuna.TrialPruned,))
    except optuna.TrialPruned as e:
        print("pruned:", e)
    print("seconds:", round(time.time() - started, 1))
    print("children left:", len(multiprocessing.active_children()))
'''


def test_a_prune_decided_on_rank_0_stops_every_rank_at_the_same_epoch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PRUNE_SCRIPT, repr(BASE)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pruned: pruned after epoch 0" in proc.stdout  # not 50 epochs: rank 1 stopped too, or rank 0 would hang
    assert "children left: 0" in proc.stdout
    assert "rank 1 failed" not in proc.stdout + proc.stderr
    (run,) = runs("ablate")
    assert run.info.status == "KILLED"


def _follower(pid: int) -> int | None:
    """The rank-1 process of the `ablate` process `pid` (a multiprocessing spawn child)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank through /proc")
def test_a_killed_rank_fails_the_trial_within_seconds_and_the_study_goes_on(tmp_path):
    base = {**BASE, "train": {**TWO_RANKS, "epochs": 500}}  # long enough to be killed while training
    path = write_study(tmp_path / "tiny.yaml", base=base, study={"name": "tiny", "seeds": [0]},
                       space={"model.attention.name": ["none"]})
    proc = start("run", path)
    client = __import__("mlflow").MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    deadline = time.time() + 240
    while time.time() < deadline:  # training has begun on both ranks once an epoch is logged
        children = [r for r in runs() if r.data.tags.get("ablate.role") != "study"] if (
            tmp_path / "mlruns" / "mlflow.db").exists() else []
        if children and client.get_metric_history(children[0].info.run_id, "train/loss"):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    follower = _follower(proc.pid)
    assert follower is not None
    killed = time.time()
    os.kill(follower, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    waited = time.time() - killed
    assert waited < 60, waited  # bounded: the closed connection fails rank 0's next collective
    assert "trial 0 fail (RankFailed: rank 1 failed: killed by SIGKILL)" in out, out + err[-2000:]
    (trial,) = load().trials
    assert trial.state == TrialState.FAIL
    (run,) = [r for r in runs() if r.data.tags.get("ablate.role") != "study"]
    assert run.info.status == "FAILED" and "rank 1 failed" in run.data.tags["reason"]


STOP_SCRIPT = '''
import multiprocessing, os, signal, sys, time
from pathlib import Path
import pytorch_lightning as pl
from ablate.config import parse_trial
from ablate.errors import Preempted
from ablate.train import run_trial

class SigtermAtStep1(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.step = trainer.global_step
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # rank 0 takes the signal, as from a scheduler

if __name__ == "__main__":
    base = eval(sys.argv[1])
    base["train"]["epochs"] = 50
    seen = SigtermAtStep1()
    started = time.time()
    try:
        run_trial(parse_trial(base), callbacks=[seen], checkpoint=Path(sys.argv[2]))
    except Preempted as e:
        print("stopped:", e)
    print("step:", seen.step)
    print("seconds:", round(time.time() - started, 1))
    print("children left:", len(multiprocessing.active_children()))
'''


def test_a_signal_on_rank_0_stops_every_rank_a_few_batches_later_with_a_checkpoint(tmp_path):
    """The stop is voted without a host wait (distributed.StopVote): every rank reads the vote two batches after the
    signal, so all stop at the same batch, and rank 0 writes the checkpoint a resume continues from."""
    checkpoint = tmp_path / "last.ckpt"
    base = {**BASE, "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    proc = subprocess.run([sys.executable, "-c", STOP_SCRIPT, repr(base), str(checkpoint)], capture_output=True,
                          text=True, timeout=600, env=cli_env(), cwd=tmp_path)
    assert "stopped: preempted (SIGTERM)" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "step: 3" in proc.stdout  # the signal after step 1's batch, the vote read two batches later
    assert "children left: 0" in proc.stdout and checkpoint.is_file()
