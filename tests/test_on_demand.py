"""Results over seeds, bought cheaply: seeds on demand, cost limits before training, warm starts, and the
configuration runs that carry each configuration's result in MLflow.

The study runner is real (Optuna, both stores, the configuration runs); the trial is a toy objective whose effects
are known (`Toy`, in place of train.run_trial: it opens the trial's MLflow run and logs a value drawn around its
module's true accuracy), so that the decisions can be checked against the truth in seconds.
"""
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from helpers import TINY_BASE, Toy, load, runs, study_run_of
from optuna.trial import TrialState

from ablate import stats
from ablate import study as study_runner
from ablate.plan import StudyPlan
from ablate.report import ablation_table
from ablate.spec import load_study
from ablate.study.optuna_setup import make_pruner


@pytest.fixture
def toy():
    return Toy()  # the trainer the runner is handed: run_study(spec, trainer=toy)


def study_file(tmp_path: Path, name: str, **study) -> Path:
    path = tmp_path / f"{name}.yaml"
    doc = {"study": {"name": name, "price_steps": False, **study}, "base": TINY_BASE,
           "space": {"model.attention.name": ["none", "se", "cbam"]}}
    path.write_text(yaml.safe_dump(doc))
    return path


def seeds_run(study) -> dict[str, list[int]]:
    out = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        out.setdefault(t.user_attrs["label"], []).append(t.user_attrs["seed"])
    return {k: sorted(v) for k, v in out.items()}


# ---------------------------------------------------------------- the decision, on known samples

def test_next_seeds_adds_a_seed_only_while_the_interval_holds_zero():
    base = pd.Series([60.0, 61.0, 59.5], index=[0, 1, 2])
    clear = base + pd.Series([30.0, 29.0, 31.0], index=[0, 1, 2])  # +30 points: decided at once
    unclear = base + pd.Series([1.0, -1.2, 0.5], index=[0, 1, 2])  # holds 0
    samples = {"none": base, "cbam": clear, "se": unclear}
    tried = {k: {0, 1, 2} for k in samples}
    assert stats.next_seeds(samples, tried, set(), "none", max_seeds=10) == {"se": {3}, "none": {3}}
    assert stats.next_seeds(samples, tried, {"se"}, "none", max_seeds=10) == {}  # se's seed 3 is still running
    assert stats.next_seeds(samples, tried, {"none"}, "none", max_seeds=10) == {}  # ... or the baseline's
    assert stats.next_seeds(samples, tried, set(), "none", max_seeds=3) == {}  # at max: no more, decided or not
    # minimising (a loss): the same samples, the clear delta is now 'worse', still decided
    assert "cbam" not in stats.next_seeds(samples, tried, set(), "none", max_seeds=10, maximize=False)


# ---------------------------------------------------------------- seeds on demand, end to end

def test_seeds_on_demand_stop_a_clear_cell_at_min_and_give_a_null_effect_up_to_max(tmp_path, toy):
    spec = load_study(study_file(tmp_path, "demand", seeds={"min": 2, "max": 6, "until": "decided"}))
    study = study_runner.run_study(spec, trainer=toy)
    seeds = seeds_run(study)
    assert seeds["attention=cbam"] == [0, 1]  # +30 points: decided with the first two seeds
    assert len(seeds["attention=se"]) > 2  # no effect: its interval holds 0 for a while, so it got more
    assert len(seeds["attention=se"]) <= 6 and seeds["attention=none"] == list(range(len(seeds["attention=none"])))
    assert set(seeds["attention=se"]) <= set(seeds["attention=none"])  # every seed paired with the baseline's
    assert len(toy.trained) == sum(map(len, seeds.values()))  # each cell x seed trained once
    table = ablation_table("demand").frame
    assert table.loc["attention=cbam", "verdict"] == "better" and table.loc["attention=cbam", "n"] == 2
    assert table.loc["attention=se", "n"] == len(seeds["attention=se"])

    # the configuration runs carry the result over seeds, between the parent and the seed runs
    every = runs("demand", configurations=True)
    configuration = {r.info.run_name: r for r in every if r.data.tags.get("ablate.role") == "configuration"}
    assert set(configuration) == {"none", "se", "cbam"}
    cbam = configuration["cbam"]
    assert cbam.info.status == "FINISHED" and cbam.data.metrics["seeds"] == 2
    assert cbam.data.tags["ablate.verdict"] == "better"
    assert cbam.data.metrics["val/acc1/delta_low"] > 0.2 and cbam.data.metrics["val/acc1/mean"] == pytest.approx(
        table.loc["attention=cbam", "top-1 acc (%)"] / 100)
    assert configuration["none"].data.tags["ablate.verdict"] == "baseline"
    trial_runs = [r for r in every if r.data.tags.get("ablate.role") == "trial"]
    assert sorted(r.info.run_name for r in trial_runs if r.data.tags["ablate.cell"] == "attention=cbam") == [
        "cbam · seed 0", "cbam · seed 1"]
    parent = next(r for r in every if r.data.tags.get("ablate.role") == "study")
    assert all(study_run_of(r, every) == parent.info.run_id for r in trial_runs)
    assert parent.data.tags["ablate.best_configuration"] == "cbam"
    assert parent.data.metrics["trials/complete"] == len(trial_runs)

    # running it again changes nothing: every decision stands
    again = study_runner.run_study(load_study(spec.path), trainer=toy)
    assert seeds_run(again) == seeds and len(toy.trained) == sum(map(len, seeds.values()))


def test_a_search_with_seeds_on_demand_repeats_each_configuration_and_ranks_by_mean(tmp_path, toy):
    path = study_file(tmp_path, "search", sampler="random", trials=8, seeds={"min": 2, "max": 3},
                      confirm={"top": 0})  # the search's own repeats (test_selection: its confirmation)
    study = study_runner.run_study(load_study(path), trainer=toy)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 8
    by_cell = {}
    for t in trials:
        by_cell.setdefault(t.user_attrs["label"], set()).add(t.user_attrs["seed"])
    assert all(len(s) >= 2 for s in list(by_cell.values())[:-1])  # repeats up to min (the budget may cut the last)
    table = ablation_table("search").frame
    assert table["top-1 acc (%)"].is_monotonic_decreasing  # a search's rows: best mean first
    names = {r.info.run_name for r in runs("search")}
    assert any(n.startswith("#") and n.endswith("· seed 1") for n in names)


# ---------------------------------------------------------------- cost limits before training

def test_constraints_refuse_a_grid_cell_before_it_trains_and_the_report_says_why(tmp_path, toy):
    path = study_file(tmp_path, "costly", seeds=[0, 1], constraints={"params_delta_pct": {"max": 0.5}})
    study_runner.run_study(load_study(path), trainer=toy)  # SE and CBAM add ~0.9% to resnet10_narrow: both refused
    assert {m for m, _ in toy.trained} == {"none"}
    table = ablation_table("costly")
    assert list(table.frame.index) == ["attention=none"]
    refused = table.refused
    assert set(refused) == {"attention=se", "attention=cbam"}
    assert refused["attention=se"].startswith("params_delta_pct 0.") and "> max 0.5" in refused["attention=se"]
    configuration = {r.info.run_name: r for r in runs("costly", configurations=True)
                     if r.data.tags.get("ablate.role") == "configuration"}
    assert configuration["se"].data.tags["ablate.verdict"] == "refused"


def test_constraints_reach_a_searched_studys_sampler_and_prune_before_training(tmp_path, toy):
    path = study_file(tmp_path, "costly_search", sampler="tpe", trials=6,
                      constraints={"params_m": {"max": 1.25}})  # none: 1.243M fits; se and cbam: 1.254M do not
    study = study_runner.run_study(load_study(path), trainer=toy)
    refused = [t for t in study.trials if "refused" in t.user_attrs]
    assert refused and all(t.state == TrialState.PRUNED and t.params["model.attention.name"] != "none"
                           for t in refused)
    # what Optuna's sampler learns: the excess over the limit (SE 1.2603M, CBAM 1.2607M on 16 px synthetic data)
    assert all(t.constraints == {"params_m": pytest.approx(0.0105, abs=0.0005)} for t in refused)
    assert all(t.user_attrs["refused"].startswith("params_m 1.26 > max 1.25") for t in refused)
    assert {m for m, _ in toy.trained} <= {"none"}  # a refused configuration never trained
    assert len(toy.trained) == len(study.trials) - len(refused)


# ---------------------------------------------------------------- warm start

def test_warm_start_informs_the_sampler_without_counting_as_the_new_studys_trials(tmp_path, toy):
    first = study_file(tmp_path, "first", sampler="random", trials=4, confirm={"top": 0})
    study_runner.run_study(load_study(first), trainer=toy)
    second = study_file(tmp_path, "second", sampler="tpe", trials=3, warm_start="first", confirm={"top": 0})
    study = study_runner.run_study(load_study(second), trainer=toy)
    warm = [t for t in study.trials if t.user_attrs.get("warm_start_of") == "first"]
    own = [t for t in study.trials if "warm_start_of" not in t.user_attrs]
    assert len(warm) == 4 and all(t.state == TrialState.COMPLETE for t in warm)
    assert len(own) == 3 and len(toy.trained) == 4 + 3
    # the report is the new study's own trials (n counts seeds: a configuration sampled twice with one seed is n 1)
    assert ablation_table("second").frame["n"].sum() == len({(t.user_attrs["cell"], t.user_attrs["seed"]) for t in own})
    study_runner.run_study(load_study(second), trainer=toy)  # resumed: the earlier trials are not copied twice
    assert len([t for t in load("second").trials if "warm_start_of" in t.user_attrs]) == 4


# ---------------------------------------------------------------- pruning inside short trials (real training)

def test_asha_sees_every_validation_of_a_trial_that_validates_twice_an_epoch(tmp_path):
    path = study_file(tmp_path, "asha", sampler="random", pruner="asha", trials=3, confirm={"top": 0})
    study = study_runner.run_study(load_study(path, ["train.val_every=0.5", "train.epochs=2",
                                                     "data.train_size=64"]))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == [0, 1, 2, 3] for t in done)  # 2 epochs x 2 validations
    for t in study.trials:
        if t.state == TrialState.PRUNED:  # ASHA's first rung: the first validation, halfway through epoch 0
            assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
    assert isinstance(make_pruner(StudyPlan(load_study(path))), optuna.pruners.SuccessiveHalvingPruner)
