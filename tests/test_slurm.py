"""`ablate run --launcher slurm` on a real single-node Slurm, with the study on the CI PostgreSQL.

Needs a cluster: $ABLATE_TEST_SLURM is its slurm.conf (.ci/run starts a throwaway one with .ci/slurm, or sets
$ABLATE_TEST_SLURM_ERROR to why it could not, and these tests skip saying so), and a PostgreSQL server as
tests/test_postgres.py does (Slurm tasks share a study through a database). The tasks run on this machine, in
the test's folder, so MLflow stays the local SQLite store. Timings go to stdout (pytest -s shows them).
"""
import os
import re
import subprocess
import time

import helpers
import mlflow
import optuna
import pytest
from helpers import TINY_BASE, ablate, cells, cells_done, load, start
from optuna.trial import TrialState
from test_durable import PAUSE_PLUGIN
from test_faults import wait_for
from test_postgres import fresh_database

ENV = "ABLATE_TEST_SLURM"
LAUNCHER = {"gpus_per_task": 0, "cpus_per_task": 1, "time": 20}  # a CPU node: no GPU to ask for


@pytest.fixture
def slurm_conf():
    conf = os.environ.get(ENV)
    if not conf:
        why = os.environ.get(f"{ENV}_ERROR", f"${ENV} is not set (.ci/run starts a cluster with .ci/slurm)")
        pytest.skip(f"no Slurm cluster to test against: {why}")
    if slurm(conf, "sinfo", "-h").returncode != 0:
        pytest.skip(f"${ENV}: the Slurm controller at {conf} does not answer")
    return conf


@pytest.fixture
def pg_url():
    yield from fresh_database()


def slurm(conf: str, *command: str) -> subprocess.CompletedProcess:
    """A Slurm client command against the test cluster."""
    return subprocess.run(command, env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True, timeout=30)


def scontrol(conf: str, job: str) -> dict[str, str]:
    """`scontrol show job JOB` as key -> value (finished jobs stay listed for MinJobAge = 600 s)."""
    out = slurm(conf, "scontrol", "-o", "show", "job", job).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def submitted_job(output: str) -> str:
    found = re.search(r"submitted \d+ slurm tasks \(job (\d+);", output)
    assert found, output[-2000:]
    return found.group(1)


def test_a_two_task_array_completes_a_four_cell_grid_with_every_cell_once(tmp_path, slurm_conf, pg_url):
    path = helpers.write_study(tmp_path / "grid.yaml", study={"name": "grid", "seeds": [0, 1]}, launcher=LAUNCHER)
    began = time.time()
    proc = ablate("run", path, "--launcher", "slurm", "--workers", 2, "--storage", pg_url, cwd=tmp_path,
                  env={"SLURM_CONF": slurm_conf}, timeout=600)
    took = time.time() - began
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    job = submitted_job(proc.stdout)
    print(f"2-task array, 4 cells: submit to report {took:.1f} s")

    study = load("grid", pg_url)
    assert cells_done(study) == cells(["none", "se"], [0, 1])  # each cell x seed COMPLETE exactly once
    assert len(study.trials) == 4
    assert {t.user_attrs["task"] for t in study.trials} <= {f"slurm {job}_0", f"slurm {job}_1"}
    for task in ("0", "1"):  # both tasks ran and ended well
        assert scontrol(slurm_conf, f"{job}_{task}")["JobState"] == "COMPLETED"
    runs = helpers.runs("grid", folder=tmp_path)
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_id for r in runs if r not in parents) == sorted(
        t.user_attrs["mlflow_run_id"] for t in study.trials)
    assert "| attention=se " in proc.stdout  # the report, once every task ended

    status = ablate("status", "grid", "--storage", pg_url, cwd=tmp_path, env={"SLURM_CONF": slurm_conf})
    assert status.returncode == 0, status.stderr[-2000:]
    assert "4 complete, 0 pruned, 0 failed, 0 stopped, 0 running, 0 waiting" in status.stdout
    assert f"slurm job {job}: 2 tasks" in status.stdout
    assert re.search(rf"{job}_0\s+ENDED", status.stdout) and re.search(rf"{job}_1\s+ENDED", status.stdout)


def test_a_task_sent_usr1_mid_trial_is_requeued_and_its_trial_resumes_from_its_checkpoint(
        tmp_path, slurm_conf, pg_url):
    recipe = {"model": TINY_BASE["model"], "data": TINY_BASE["data"] | {"train_size": 64},  # 4 batches an epoch
              "train": {"epochs": 3, "progress_bar": False}}
    path = helpers.write_study(tmp_path / "requeue.yaml", study={"name": "requeue", "seeds": [0]}, base=recipe,
                               space={"model.attention.name": ["se"]}, launcher=LAUNCHER)
    (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)  # the task pauses at epoch 1, batch 2 until a signal comes
    mark = tmp_path / "paused"
    env = {"SLURM_CONF": slurm_conf, "PAUSE_EPOCH": "1", "PAUSE_BATCH": "2", "PAUSE_MARK": str(mark)}
    log = tmp_path / "launch.log"
    began = time.time()
    with open(log, "w") as out:
        proc = start("run", path, "--launcher", "slurm", "--workers", 1, "--storage", pg_url, "--plugin", "pause",
                     cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(mark.exists, proc, "the task's pause mid-epoch", timeout=300)
    paused = time.time() - began
    [task] = load("requeue", pg_url).user_attrs["ablate.launches"][0]["tasks"]  # one task: a plain job, no array
    # what Slurm does before a time limit (--signal=USR1@...) and a preemption notice: USR1 to the job's steps
    sent = slurm(slurm_conf, "scancel", "--signal=USR1", task)
    assert sent.returncode == 0, sent.stderr
    signalled = time.time()
    try:
        proc.wait(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    print(f"USR1 requeue: submit to pause {paused:.1f} s, signal to report {time.time() - signalled:.1f} s")

    info = scontrol(slurm_conf, task)
    assert info["Restarts"] == "1" and info["JobState"] == "COMPLETED", info  # requeued once, then finished
    stopped, resumed = load("requeue", pg_url).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "preempted (SIGUSR1)"
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed"] == {"trial": 0, "epoch": 1}  # from the checkpoint, not from epoch 0
    assert stopped.user_attrs["task"] == resumed.user_attrs["task"] == f"slurm {task}"
    [run] = [r for r in helpers.runs("requeue", folder=tmp_path)
             if r.data.tags.get("optuna.trial") == "1" and r.info.status == "FINISHED"]
    assert run.data.tags["ablate.resumed_at_epoch"] == "1"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)] \
        == [0, 1, 2]  # one value per epoch: epoch 0 was not trained again
    assert not list((tmp_path / "mlruns" / "checkpoints").rglob("*.ckpt"))  # deleted once the trial finished
    assert "0 complete, 0 pruned, 0 failed, 1 stopped, 0 running" in output  # while the task waits to restart
    task_log = "".join((tmp_path / "mlruns" / "launches" / "requeue" / f"{task}_0_log.{kind}").read_text()
                       for kind in ("out", "err"))  # submitit's log: stdout holds its INFO lines
    assert "SIGUSR1: stopping after the current batch" in task_log and f"Requeued job {task}" in task_log


def test_options_sbatch_refuses_are_one_line_before_anything_is_written(tmp_path, slurm_conf, pg_url):
    path = helpers.write_study(tmp_path / "bad.yaml", study={"name": "bad", "seeds": [0]},
                               launcher=LAUNCHER | {"partition": "no-such-partition"})
    proc = ablate("run", path, "--launcher", "slurm", "--storage", pg_url, cwd=tmp_path,
                  env={"SLURM_CONF": slurm_conf})
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("ablate: error: launcher: sbatch refuses the options (") and "partition" in line, line
    assert not (tmp_path / "mlruns").exists()  # no MLflow store, no launch folder
    assert not optuna.get_all_study_names(pg_url)  # and no study in the database
