"""Edit a study file and run it again, as researchers do: `ablate run` (in this process) on one store.

A grid cell is its resolved params plus its seed, never its place in the file: re-ordering changes nothing,
adding seeds, modules, knob values or cells runs only what is new, removing a cell keeps its trials in the
store (the report leaves them out unless --all), and a change that makes old trials incomparable (the base
config, the metric) is refused in one line with the way out.
"""
import hashlib
from pathlib import Path

import pytest
from helpers import TINY_BASE, cells, cells_done, load, runs, write_study
from optuna.trial import TrialState

from ablate.report import ablation_table, write_report

MODULE = "model.attention.name"


@pytest.fixture
def run(run_cli):
    """`ablate run PATH`, which must succeed."""
    def run(path):
        proc = run_cli("run", path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run


def trained_as(study) -> dict[int, str]:
    """trial number -> the module its MLflow run was really trained with (the resolved config it logged)."""
    by_run = {r.info.run_id: r.data.params[MODULE] for r in runs() if MODULE in r.data.params}
    return {t.number: by_run[t.user_attrs["mlflow_run_id"]] for t in study.get_trials(states=(TrialState.COMPLETE,))}


def test_reordering_adding_seeds_and_modules_runs_only_what_is_new(tmp_path, run):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]})
    run(path)
    first = {t.number: t.user_attrs["label"] for t in load().trials}
    assert sorted(first.values()) == ["attention=none", "attention=se"]

    # re-ordered modules, one more module, one more seed: 6 cells x seeds, 2 of them already done
    write_study(path, study={"name": "tiny", "seeds": [0, 1]}, space={MODULE: ["eca", "se", "none"]})
    proc = run(path)
    study = load()
    assert cells_done(study) == cells(("none", "se", "eca"), (0, 1))  # every cell x seed exactly once
    assert proc.stdout.count(" complete |") == 4  # only the new ones ran
    assert not study.get_trials(states=(TrialState.FAIL,))  # no "dynamic value space" failures
    assert {n: t.user_attrs["label"] for n, t in enumerate(study.trials) if n in first} == first
    for number, module in trained_as(study).items():  # every trial's row is the model it trained
        assert study.trials[number].user_attrs["label"] == f"attention={module}"

    report = ablation_table("tiny")
    table = report.frame
    assert list(table.index) == ["attention=eca", "attention=se", "attention=none"]  # the file's order now
    assert table["n"].tolist() == [2, 2, 2] and report.baseline == "attention=none"
    se = [t.user_attrs["metrics"]["val/acc1"] for t in study.trials if t.user_attrs["label"] == "attention=se"]
    assert table.loc["attention=se", "top-1 acc (%)"] == 100 * sum(se) / 2

    again = run(path)  # nothing left to do
    assert again.stdout.count(" complete |") == 0 and len(load().trials) == 6


def test_a_knob_value_at_its_default_is_the_cell_already_run(tmp_path, run):
    """se with reduction 16 is se: adding `reduction: [16, 8]` runs only se r=8."""
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]})
    run(path)
    write_study(path, study={"name": "tiny", "seeds": [0]},
                space={MODULE: ["none", "se"], "model.attention.knobs.reduction": [16, 8]})
    proc = run(path)
    assert proc.stdout.count(" complete |") == 1
    assert len(load().trials) == 3
    table = ablation_table("tiny").frame  # rows are named as the file names them now
    assert sorted(table.index) == ["attention=none", "reduction=16, attention=se", "reduction=8, attention=se"]
    assert table["n"].tolist() == [1, 1, 1]


def test_a_removed_cell_keeps_its_trials_and_leaves_the_table(tmp_path, run, run_cli):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]},
                       space={MODULE: ["none", "se", "eca"]})
    run(path)
    write_study(path, study={"name": "tiny", "seeds": [0]})  # eca dropped
    proc = run(path)
    assert proc.stdout.count(" complete |") == 0
    assert "attention=eca" not in proc.stdout and "1 finished trials of configurations" in proc.stdout
    assert len(load().get_trials(states=(TrialState.COMPLETE,))) == 3  # still in the store
    assert list(ablation_table("tiny").frame.index) == ["attention=none", "attention=se"]
    shown = ablation_table("tiny", show_all=True).frame
    assert list(shown.index) == ["attention=none", "attention=se", "attention=eca (not in study file)"]
    assert shown["n"].tolist() == [1, 1, 1]
    report = run_cli("report", "tiny", "--all")
    assert report.returncode == 0 and "attention=eca (not in study file)" in report.stdout


def store_hashes(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "mlruns").rglob("*"))
            if p.is_file() and not p.name.endswith("setup-lock")}


def test_an_incomparable_edit_is_refused_and_force_new_starts_over(tmp_path, run, run_cli):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0]})
    run(path)
    before = store_hashes(tmp_path)

    write_study(path, study={"name": "tiny", "seeds": [0]},
                base=TINY_BASE | {"train": {"epochs": 2, "progress_bar": False}})
    proc = run_cli("run", path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "tiny.yaml: base.train.epochs: 1 -> 2 since study 'tiny' was first run" in lines[0]
    assert "a new study.name" in lines[0] and "--force-new" in lines[0]
    assert store_hashes(tmp_path) == before  # neither store touched

    write_study(path, study={"name": "tiny", "seeds": [0], "metric": "val/acc5"})
    proc = run_cli("run", path)
    assert proc.returncode == 2 and "study.metric: val/acc1 maximize -> val/acc5 maximize" in proc.stderr
    assert store_hashes(tmp_path) == before

    write_study(path, study={"name": "tiny", "seeds": [0]},
                base=TINY_BASE | {"train": {"epochs": 2, "progress_bar": False}})
    proc = run_cli("run", path, "--force-new")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the earlier trials are now study 'tiny.before-" in proc.stdout
    new = load()
    assert cells_done(new) == cells(seeds=(0,)) and len(new.trials) == 2
    aside = proc.stdout.split("now study '")[1].split("'")[0]
    old = load(aside)
    assert cells_done(old) == cells(seeds=(0,))  # the earlier results, readable under their new name
    assert write_report(aside)  # its report still finds its own runs
    trained_epochs = {r.data.params["train.epochs"] for r in runs() if "train.epochs" in r.data.params}
    assert trained_epochs == {"1", "2"}


def test_grid_studies_get_optunas_plots(tmp_path, run, run_cli):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0, 1]},
                       space={MODULE: ["none", "se", "eca"], "train.lr": [0.05, 0.1]})
    run(path)
    plots = tmp_path / "plots"
    proc = run_cli("report", "tiny", "--plots", plots)
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = {p.name for p in plots.iterdir()}
    assert {"top1_by_config.png", "parallel_coordinate.png", "param_importances.png"} <= made


def test_a_study_stored_before_a_key_existed_continues_only_as_its_trials_ran(tmp_path):
    """A study stored before data.order and train.eval existed trained on data.seed's order and measured raw
    weights: resuming it under today's defaults would mix incomparable trials, so it is refused, naming the key
    and the value that runs as the stored trials did; with that value in the file it continues."""
    from ablate.spec import load_study
    from ablate.study.optuna_setup import fingerprint, fingerprint_change

    def stored_before(path):  # the fingerprint as ablate wrote it before the two keys existed
        fp = fingerprint(load_study(path))
        return {**fp, "base": {k: v for k, v in fp["base"].items() if k not in ("data.order", "train.eval")}}

    path = write_study(tmp_path / "old.yaml")
    old = stored_before(path)
    assert fingerprint_change(load_study(path), old) == \
        "base.data.order: (added since; 'fixed' runs as the stored trials did) -> 'seed'"
    fixed = {**TINY_BASE, "data": {**TINY_BASE["data"], "order": "fixed"}}
    assert fingerprint_change(load_study(write_study(path, base=fixed)), old) is None  # EMA off: eval is inert
    with_ema = {**fixed, "train": {**fixed["train"], "ema": True}}
    old = stored_before(write_study(path, base=with_ema))
    assert "base.train.eval: (added since; 'raw'" in fingerprint_change(load_study(path), old)
    raw = {**with_ema, "train": {**with_ema["train"], "eval": "raw"}}
    assert fingerprint_change(load_study(write_study(path, base=raw)), old) is None
