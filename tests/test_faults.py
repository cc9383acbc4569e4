"""Faults, driven on real processes: SIGKILL at chosen moments, Ctrl-C, divergence, out of memory, many writers.

A kill must lose no finished trial, leave no MLflow run RUNNING, and the same command must then finish every
cell x seed exactly once. The moments are reached with a `--plugin` that pauses the worker there (the same flag
users load their own modules with), so each kill lands where the test says, not where the timer happens to.
"""
import re
import resource
import signal
import sys
import time

import mlflow
import pytest
import yaml
from helpers import TINY_BASE, ablate, cells, cells_done, load, runs, start, write_study
from optuna.trial import TrialState

FAULTS_PLUGIN = '''
"""Pause trial $FAULT_TRIAL at moment $FAULT_AT, write $FAULT_MARK, and wait to be killed."""
import functools, os, pathlib, time

import ablate.study, ablate.tracking, ablate.train

MOMENT, TRIAL, MARK = os.environ["FAULT_AT"], int(os.environ["FAULT_TRIAL"]), pathlib.Path(os.environ["FAULT_MARK"])
current = [-1]  # the trial this process is running: run_trial calls so far


def pause():
    MARK.write_text(MOMENT)
    time.sleep(600)


def wrap(module, name, before=None, after=None):
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        before and before(*args, **kwargs)
        out = real(*args, **kwargs)
        after and after(*args, **kwargs)
        return out

    setattr(module, name, wrapper)


wrap(ablate.train, "run_trial", before=lambda *a, **k: current.__setitem__(0, current[0] + 1))
if MOMENT == "build":  # building the model: the trial's MLflow run does not exist yet
    wrap(ablate.train, "build_model", before=lambda *a, **k: current[0] == TRIAL and pause())
elif MOMENT == "log":  # just after epoch 1's validation metrics were written to MLflow
    wrap(ablate.tracking, "log_metrics", after=lambda mlflow, run_id, metrics, step:
         current[0] == TRIAL and step == 1 and "val/acc1" in metrics and pause())
elif MOMENT == "between":  # the trial is told COMPLETE, the next one has not started
    real_progress = ablate.study.workers._progress

    def progress(*args):
        report = real_progress(*args)

        def then_pause(study, frozen):
            report(study, frozen)
            if frozen.number == TRIAL:
                pause()

        return then_pause

    ablate.study.workers._progress = progress
'''

ALL_CELLS = cells()


def wait_for(condition, proc, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the study ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.3)


def trial_run(number: int):
    found = [r for r in runs() if r.data.tags.get("optuna.trial") == str(number)]
    return found[0] if found else None


def state_of(number: int):
    try:
        trials = load().trials
    except KeyError:  # the study is not in the journal yet
        return None
    return trials[number].state if number < len(trials) else None


@pytest.mark.parametrize("moment", ["build", "log", "between"])
def test_sigkill_at_any_moment_loses_nothing_and_the_rerun_finishes_each_cell_once(tmp_path, moment):
    path = write_study(tmp_path / "tiny.yaml", base=TINY_BASE | {"train": {"epochs": 3, "progress_bar": False}})
    (tmp_path / "faults.py").write_text(FAULTS_PLUGIN)
    mark = tmp_path / "paused"
    proc = start("run", str(path), "--plugin", "faults",
                 env={"FAULT_AT": moment, "FAULT_TRIAL": "1", "FAULT_MARK": str(mark)})
    wait_for(mark.exists, proc, f"pause at {moment!r}")
    first = load().trials[0]
    assert first.state == TrialState.COMPLETE
    if moment == "build":
        assert state_of(1) == TrialState.RUNNING and trial_run(1) is None
    elif moment == "log":
        assert state_of(1) == TrialState.RUNNING and trial_run(1).info.status == "RUNNING"
        assert "val/acc1" in trial_run(1).data.metrics  # killed with some of its epochs logged
    else:
        assert [t.state for t in load().trials] == [TrialState.COMPLETE] * 2 + [TrialState.WAITING] * 2
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    resumed = ablate("run", str(path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = load()
    assert cells_done(study) == ALL_CELLS  # every cell x seed once: nothing duplicated, nothing missing
    assert study.trials[0].state == TrialState.COMPLETE  # the finished trial was kept, not rerun
    assert study.trials[0].user_attrs["mlflow_run_id"] == first.user_attrs["mlflow_run_id"]
    assert not [r for r in runs() if r.info.status == "RUNNING"]
    if moment == "between":
        assert len(study.trials) == 4 and not study.get_trials(states=(TrialState.FAIL,))
    else:
        killed = study.trials[1]
        assert killed.state == TrialState.FAIL and "worker died" in killed.user_attrs["fail_reason"]
        assert len(study.trials) == 5  # its cell ran again as a new trial
    if moment == "log":
        assert trial_run(1).info.status == "FAILED" and "worker died" in trial_run(1).data.tags["reason"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_marks_the_trial_stops_cleanly_and_says_how_to_resume(tmp_path, jobs):
    slow = TINY_BASE | {"train": {"epochs": 30, "progress_bar": False}}
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]}, base=slow)  # 2 cells of 30 epochs
    proc = start("run", str(path), "--jobs", str(jobs))
    busy = (lambda: state_of(1) == TrialState.RUNNING) if jobs == 1 else (  # jobs 2: both workers mid-trial
        lambda: state_of(0) == TrialState.RUNNING and state_of(1) == TrialState.RUNNING)
    wait_for(lambda: busy() and trial_run(1) is not None and "val/acc1" in trial_run(1).data.metrics,
             proc, "a trial mid-training")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (to us only: the workers must be told by us)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert f"resume with: ablate run {path}" in err
    assert "Traceback" not in out + err

    study = load()
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert interrupted and all("KeyboardInterrupt" in t.user_attrs["fail_reason"] for t in interrupted)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    statuses = {r.data.tags.get("optuna.trial", "parent"): r.info.status for r in runs()}
    assert statuses["parent"] == "KILLED" and statuses["1"] == "KILLED"
    assert "RUNNING" not in statuses.values()

    resumed = ablate("run", str(path))  # the same command: a shorter train.epochs would be another study
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert cells_done(load()) == cells(seeds=(0,))


def test_a_diverging_cell_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    from ablate.report import ablation_table

    path = write_study(tmp_path / "nan.yaml", study={"name": "nan", "seeds": [0]},
                       base=TINY_BASE | {"train": {"epochs": 2, "progress_bar": False}},
                       space={"train.lr": [1.0e10, 0.05]})  # the first cell's loss becomes NaN
    proc = ablate("run", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the loss turns NaN in training or, first, on the validation set (either ends the trial with its reason)
    assert re.search(r"trial 0 fail \(DivergedError: (train|val)/loss is nan", proc.stdout), proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr
    diverged, fine = load("nan").trials
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["fail_reason"].startswith("DivergedError")
    assert fine.state == TrialState.COMPLETE
    run = [r for r in runs("nan") if r.data.tags.get("optuna.trial") == "0"][0]
    assert run.info.status == "FAILED" and run.data.tags["reason"].startswith("DivergedError")
    table = ablation_table("nan").frame
    assert table.loc["lr=10000000000.0", ["n", "failed"]].tolist() == [0, 1]  # shown, not dropped
    assert table.loc["lr=0.05", "n"] == 1

    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(TINY_BASE | {"train": {"epochs": 2, "lr": 1.0e10}}))
    alone = ablate("train", str(tmp_path / "trial.yaml"))  # one trial alone: not bad input, exit 1
    assert alone.returncode == 1 and re.search(r"trial diverged: (train|val)/loss is nan", alone.stderr)


@pytest.mark.skipif(sys.platform != "linux", reason="address-space limit as the out-of-memory fault")
def test_an_out_of_memory_cell_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    path = write_study(tmp_path / "oom.yaml", study={"name": "oom", "seeds": [0]},
                       space={"data.image_size": [1024, 16]})  # 1024 px activations need several GB
    limit = 6 * 2**30  # the process takes ~4.2 GB of address space for a 16 px trial (torch's CUDA build)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = ablate("run", str(path), preexec_fn=cap_memory, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    big, small = load("oom").trials
    assert big.state == TrialState.FAIL and "can't allocate memory" in big.user_attrs["fail_reason"]
    assert small.state == TrialState.COMPLETE  # the next trial got its memory back
    assert not [r for r in runs("oom") if r.info.status == "RUNNING"]


def test_two_workers_logging_at_once_lose_no_metric(tmp_path):
    """--jobs 2 write to one SQLite store together: every epoch of every metric of every run is there."""
    epochs = 4
    path = write_study(tmp_path / "tiny.yaml", base=TINY_BASE | {"train": {"epochs": epochs, "progress_bar": False}})
    proc = ablate("run", str(path), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    children = [r for r in runs() if "optuna.trial" in r.data.tags]
    assert len(children) == 4 and cells_done(load()) == ALL_CELLS
    per_epoch = ("val/acc1", "val/acc5", "val/loss", "val/acc1_best", "train/loss", "train/throughput",
                 "train/epoch_time", "train/peak_mem_mb", "train/lr")
    for run in children:
        for metric in per_epoch:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == list(range(epochs)), (run.info.run_id, metric, steps)
        for metric in ("model/params", "model/gmacs"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == 1
