"""Studies end to end on tiny trials: grid, resume, kill, parallel workers, conditional sampling, bad files."""
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from helpers import TINY_BASE, ablate, cells, cells_done, load, runs, start, study_run_of, write_study
from optuna.trial import TrialState

from ablate.errors import AblateError
from ablate.report import ablation_table
from ablate.spec import grid_cells, load_study
from ablate.storage import Attr
from ablate.study import FailureStreak

# ---------------------------------------------------------------- validation (nothing runs, nothing is written)

@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["study"].update(sampler="annealing"), "study.sampler: 'annealing' is not allowed"),
    (lambda d: d["study"].update(metrc="val/acc1"), "study.metrc: unknown key (did you mean 'metric'?)"),
    (lambda d: d["space"].update({"model.attention.name": ["none", "sse"]}), "unknown attention module 'sse'"),
    (lambda d: d["space"].update({"train.lr": []}), "space.train.lr: empty choices"),
    (lambda d: d["space"].update({"train.lr": {"low": 0.5, "high": 0.1, "step": 0.1}}), "range low 0.5 > high 0.1"),
    (lambda d: d["study"].update(metric="val/acc9"), "study.metric: no trial logs 'val/acc9'"),
    (lambda d: d["base"]["train"].update(epochs=-1), "base: train.epochs: Input should be greater than or equal to 1"),
    (lambda d: d["space"].update({"model.attention.knobs.reduction": [0]}), "se.reduction=0 is out of range"),
    (lambda d: d["space"].update({"model.attention.knobs.kernel_size": [3]}), "no module in the study takes knob"),
    (lambda d: d.update(study={"name": "tiny", "sampler": "tpe", "trials": 2}) or d["space"].update(
        {"train.optimizer": ["sgd", "bogus"]}), "train.optimizer: 'bogus' is not allowed"),
])
def test_bad_study_files_fail_fast_and_touch_no_store(tmp_path, run_cli, mutate, message):
    doc = {"study": {"name": "tiny", "seeds": [0]}, "base": yaml.safe_load(yaml.safe_dump(TINY_BASE)),
           "space": {"model.attention.name": ["none", "se"]}}
    mutate(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(AblateError) as err:
        load_study(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    proc = run_cli("run", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("study:\n  name: x\n  seeds: [0, 1\n")
    with pytest.raises(AblateError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_study(path)


def test_grid_drops_knobs_a_module_does_not_take(tmp_path):
    path = write_study(tmp_path / "s.yaml", space={
        "model.attention.name": ["none", "se", "eca", "cbam"],
        "model.attention.knobs.reduction": [8, 16],
        "model.attention.knobs.kernel_size": [3, 7],
    })
    cells = grid_cells(load_study(path))
    per_module = {m: sum(c.params["model.attention.name"] == m for c in cells) for m in ("none", "se", "eca", "cbam")}
    assert per_module == {"none": 1, "se": 2, "eca": 2, "cbam": 4}
    assert all("model.attention.knobs.kernel_size" not in c.params for c in cells
               if c.params["model.attention.name"] == "se")


def test_ladder_cells_accumulate(tmp_path):
    path = write_study(tmp_path / "s.yaml", space={}, study={"name": "ladder", "ladder": True, "seeds": [0]},
                       cells=[{"name": "baseline"}, {"name": "+ cosine", "train.schedule": "cosine"},
                              {"name": "+ label smoothing", "train.label_smoothing": 0.1}])
    cells = grid_cells(load_study(path))
    assert [c.name for c in cells] == ["baseline", "+ cosine", "+ label smoothing"]  # labels, not params
    assert cells[2].params == {"train.schedule": "cosine", "train.label_smoothing": 0.1}


# ---------------------------------------------------------------- running

def test_grid_study_runs_tracks_and_resumes(tmp_path, run_cli):
    path = write_study(tmp_path / "tiny.yaml")
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "attention=se" in proc.stdout and "attention=none" in proc.stdout  # the summary table
    study = load()
    assert cells_done(study) == cells()
    all_runs = runs()
    parents = [r for r in all_runs if r.data.tags.get("ablate.role") == "study"]
    every = runs(configurations=True)
    children = [r for r in all_runs if "optuna.trial" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert all(study_run_of(r, every) == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in all_runs)
    assert {r.data.tags["optuna.trial"] for r in children} == {"0", "1", "2", "3"}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in children}

    again = run_cli("run", path)  # resume: nothing left to do
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(load().trials) == 4 and len(runs()) == 5 and len(runs(configurations=True)) == 5 + 2


def test_killed_study_resumes_every_cell_exactly_once(tmp_path, run_cli):
    slow = {"epochs": 20, "progress_bar": False}  # long enough that the kill lands inside trial 1
    path = write_study(tmp_path / "tiny.yaml", base=TINY_BASE | {"train": slow})
    log = tmp_path / "run.log"  # a file, not a pipe: nobody reads while the worker runs
    with open(log, "w") as out:  # a process: SIGKILL mid-trial is what this test is about
        proc = start("run", str(path), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill mid-trial: trial 0 finished, trial 1 is running
        time.sleep(0.5)
        try:
            states = {t.number: t.state for t in load().trials}
        except KeyError:  # the study is not in the journal yet
            continue
        # MLflow only once trial 0 is done: opening the store while the worker creates its tables races with it
        if states.get(0) == TrialState.COMPLETE and states.get(1) == TrialState.RUNNING and [
                r for r in runs() if r.data.tags.get("optuna.trial") == "1" and r.info.status == "RUNNING"]:
            break  # trial 1 is training under its own MLflow run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trials = load().trials
    assert len(trials) > 1 and trials[1].state == TrialState.RUNNING, \
        f"the kill did not land mid-trial:\n{log.read_text()[-3000:]}"

    resumed = run_cli("run", path)  # the resume is an ordinary run
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = load()
    assert cells_done(study) == cells()  # each cell x seed exactly once
    assert any(t.state == TrialState.FAIL for t in study.trials)  # the interrupted trial
    assert not [r for r in runs() if r.info.status == "RUNNING"]
    killed = [r for r in runs() if r.data.tags.get("optuna.trial") == "1"]
    assert [r.info.status for r in killed] == ["FAILED"]  # the run the kill interrupted


def test_two_workers_run_every_cell_once(tmp_path):
    path = write_study(tmp_path / "tiny.yaml")
    proc = ablate("run", str(path), "--jobs", "2")  # a process: it spawns two worker processes
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cells_done(load()) == cells()


def test_two_ablate_runs_of_one_study_on_one_machine_share_it(tmp_path):
    """Two terminals, one journal: setup is locked, and neither fails the other's live trials as dead."""
    path = write_study(tmp_path / "tiny.yaml", base=TINY_BASE | {"train": {"epochs": 3, "progress_bar": False}},
                       study={"name": "tiny", "seeds": [0, 1, 2]})
    first, second = start("run", str(path)), start("run", str(path))  # processes: two at once, one journal
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [err[-2000:] for _, err in outs]
    study = load()
    assert cells_done(study) == cells(seeds=(0, 1, 2))
    assert [o.count(" complete |") > 0 for o, _ in outs] == [True, True]  # both ran trials
    assert len(runs()) == 1 + 6 and all(r.info.status == "FINISHED" for r in runs())  # one parent, 6 children
    assert not study.get_trials(states=(TrialState.FAIL,))
    # a worker that lost the race for the last cell leaves a trial with no configuration: never a row
    assert all("label" not in t.user_attrs for t in study.get_trials(states=(TrialState.PRUNED,)))
    table = ablation_table("tiny").frame
    assert list(table.index) == ["attention=none", "attention=se"] and table["n"].tolist() == [3, 3]
    assert table["failed"].tolist() == [0, 0] and table["pruned"].tolist() == [0, 0]


def test_a_worker_that_finds_no_cell_left_adds_no_row(tmp_path, run_cli):
    """The race two workers run for the last queued cell, forced: the loser's trial gets no configuration."""
    from ablate.plan import StudyPlan
    from ablate.storage import make_storage
    from ablate.study import make_objective, open_study

    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]})
    assert run_cli("run", path).returncode == 0
    plan = StudyPlan(load_study(path))
    study = open_study(plan, make_storage(None, 1))
    parent = study.user_attrs["mlflow_parent_run_id"]
    study.optimize(make_objective(plan, lambda cell: parent), n_trials=1)  # the queue is empty
    loser = study.trials[-1]
    assert loser.state == TrialState.PRUNED and "label" not in loser.user_attrs
    assert len(runs()) == 1 + 2  # it trained nothing and opened no MLflow run
    table = ablation_table("tiny").frame
    assert list(table.index) == ["attention=none", "attention=se"] and table["pruned"].tolist() == [0, 0]


def test_tpe_never_samples_a_knob_the_module_does_not_take(tmp_path, run_cli):
    path = write_study(tmp_path / "tpe.yaml", study={"name": "tpe", "sampler": "tpe", "trials": 6, "seeds": [0],
                                                          "confirm": {"top": 0}},  # sampling only
                       space={"model.attention.name": ["se", "eca", "cbam"],
                              "model.attention.knobs.reduction": [4, 8],
                              "model.attention.knobs.kernel_size": [3, 5]})
    proc = run_cli("run", path, "data.train_size=16", "data.val_size=16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    children = [r for r in runs("tpe") if r.data.tags.get("ablate.role") != "study"]
    assert len(children) == 6
    for run in children:
        module = run.data.params["model.attention.name"]
        assert ("model.attention.knobs.kernel_size" in run.data.params) == (module in ("eca", "cbam"))
        assert ("model.attention.knobs.reduction" in run.data.params) == (module in ("se", "cbam"))


def test_dry_run_lists_trials_with_params_and_gmacs_and_trains_nothing(tmp_path, run_cli):
    path = write_study(tmp_path / "tiny.yaml")
    proc = run_cli("run", path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "attention=none" in proc.stdout and "attention=se" in proc.stdout and "GMACs" in proc.stdout
    assert not (tmp_path / "mlruns").exists()


def test_multi_objective_study_keeps_the_pareto_front(tmp_path, run_cli):
    path = write_study(tmp_path / "pareto.yaml", study={
        "name": "pareto", "seeds": [0],
        "metric": [{"metric": "val/acc1", "direction": "maximize"},
                   {"metric": "model/gmacs", "direction": "minimize"}]},
        space={"model.attention.name": ["none", "se", "cbam"]})
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = load("pareto")
    assert len(study.directions) == 2 and len(study.trials) == 3
    front = study.best_trials
    assert front and all(t.state == TrialState.COMPLETE for t in front)
    cheapest = min(study.trials, key=lambda t: t.values[1])
    assert cheapest in front  # nothing beats the plain model on GMACs


def test_a_worker_stops_once_its_last_trials_all_failed_for_one_reason():
    """Three failures in a row with one reason stop the worker with it; a success or another reason resets."""
    study = optuna.create_study()
    streak = FailureStreak(3)

    def finish(reason=None):
        state = TrialState.FAIL if reason else TrialState.COMPLETE
        streak(study, optuna.trial.create_trial(state=state, value=None if reason else 1.0,
                                                user_attrs={Attr.FAIL_REASON: reason} if reason else {}))

    for reason in ["AblateError: a", "AblateError: a", None, "AblateError: a", "AblateError: b", "AblateError: b"]:
        finish(reason)  # never three alike in a row
    with pytest.raises(AblateError, match="the last 3 trials all failed with the same error, so the study stops: "
                                          "AblateError: b"):
        finish("AblateError: b")
