"""`ablate run --launcher local` (submitit's local executor: the Slurm launcher's tasks as processes here) and
`ablate status` on a study with a trial running. The Slurm launcher itself: tests/test_slurm.py."""
import re
import signal

from helpers import TINY_BASE, ablate, cells, cells_done, load, runs, start, write_study
from test_durable import PAUSE_PLUGIN
from test_faults import wait_for


def test_local_launcher_runs_a_two_task_array_over_the_journal_with_every_cell_once(tmp_path):
    path = write_study(tmp_path / "tiny.yaml")
    proc = ablate("run", path, "--launcher", "local", "--workers", 2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"submitted 2 local tasks \(job \d+; logs in .*mlruns/launches/tiny\)", proc.stdout)
    assert "| attention=se " in proc.stdout  # the report, once both tasks ended

    study = load("tiny", tmp_path / "mlruns" / "optuna.journal")
    assert cells_done(study) == cells()  # every cell x seed COMPLETE once
    [launched] = study.user_attrs["ablate.launches"]
    assert {t.user_attrs["task"] for t in study.trials} <= {f"local {task}" for task in launched["tasks"]}
    children = [r for r in runs(folder=tmp_path) if "optuna.trial" in r.data.tags]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)

    status = ablate("status", "tiny", cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "4 complete, 0 pruned, 0 failed, 0 stopped, 0 running, 0 waiting" in status.stdout
    assert f"local job {launched['job']}: 2 tasks" in status.stdout
    assert all(re.search(rf"{task}\s+ENDED", status.stdout) for task in launched["tasks"])


def test_status_shows_a_running_trial_with_its_epoch(tmp_path):
    recipe = {"model": TINY_BASE["model"], "data": TINY_BASE["data"] | {"train_size": 64},
              "train": {"epochs": 3, "progress_bar": False}}
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]}, base=recipe,
                       space={"model.attention.name": ["se"]})
    (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)
    mark = tmp_path / "paused"
    proc = start("run", path, "--plugin", "pause", cwd=tmp_path,
                 env={"PAUSE_EPOCH": "1", "PAUSE_BATCH": "2", "PAUSE_MARK": str(mark)})
    try:
        wait_for(mark.exists, proc, "the pause in epoch 1")
        status = ablate("status", "tiny.yaml", cwd=tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "0 complete, 0 pruned, 0 failed, 0 stopped, 1 running, 0 waiting" in status.stdout
    assert re.search(r"trial 0 +attention=se +seed 0 +epoch 1/3", status.stdout), status.stdout
    assert proc.returncode == 75  # stopped with its checkpoint; `ablate status` changed nothing
