"""One meaning of a result: the report's rows and the configuration runs in MLflow (what a researcher browses in the
UI) give the same n, mean, sd, delta, interval, verdict and paper effect for every configuration, in a grid, a
ladder and a search, because both are made by results.compare_rows from the same trials.

The runner is real (Optuna, both stores, the configuration runs); the trainer is helpers.Toy, whose effects are
known, handed to run_study in place of train.run_trial.
"""
import math

import pytest
import yaml
from helpers import TINY_BASE, Toy, runs

from ablate.report import ablation_table
from ablate.spec import load_study
from ablate.study import run_study

DELTA = "Δ top-1"


def study_file(tmp_path, name, space=None, **sections):
    doc = {"study": {"name": name, "seeds": [0, 1, 2], "price_steps": False}, "base": TINY_BASE,
           "space": {"model.attention.name": ["none", "se", "cbam"]} if space is None else space}
    doc.update(sections)
    doc["study"] = {"name": name, **doc["study"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def same(a, b):
    return (a is None or (isinstance(a, float) and math.isnan(a))) and (
        b is None or (isinstance(b, float) and math.isnan(b))) or a == pytest.approx(b, abs=1e-9)


def assert_one_meaning(name: str, delta: str = DELTA) -> dict:
    """Every row of the report equals its configuration run's metrics and tags; returns the runs by row label."""
    table = ablation_table(name).frame
    configuration = {r.data.tags["ablate.cell"]: r for r in runs(name, configurations=True)
                     if r.data.tags.get("ablate.role") == "configuration"}
    shown = [row for row in table.index if table.at[row, "n"] > 0]
    assert shown and set(shown) <= set(configuration)
    for row in shown:
        metrics, tags = configuration[row].data.metrics, configuration[row].data.tags
        assert table.at[row, "n"] == metrics["seeds"], row
        assert (table.at[row, "pruned"], table.at[row, "failed"]) == (
            metrics["seeds/pruned"], metrics["seeds/failed"]), row  # the seeds the mean leaves out, in both
        assert table.at[row, "stage"] == tags["ablate.stage"] if "stage" in table else "ablate.stage" not in tags
        assert same(table.at[row, "top-1 acc (%)"], metrics["val/acc1/mean"] * 100), row
        assert same(table.at[row, "top-1 acc (%) sd"], metrics.get("val/acc1/sd", math.nan) * 100), row
        assert table.at[row, "verdict"] == tags["ablate.verdict"], row
        if tags["ablate.verdict"] == "baseline":
            assert "val/acc1/delta" not in metrics
            continue
        assert same(table.at[row, delta], metrics["val/acc1/delta"] * 100), row
        assert same(table.at[row, f"{delta} lo"], metrics.get("val/acc1/delta_low", math.nan) * 100), row
        assert same(table.at[row, f"{delta} hi"], metrics.get("val/acc1/delta_high", math.nan) * 100), row
        if "effect" in table and isinstance(table.at[row, "effect"], str) and table.at[row, "effect"] != "-":
            assert table.at[row, "effect"] == tags["ablate.effect"], row
            assert f"paper {table.at[row, 'paper Δ top-1']:+.2f}" in tags["ablate.delta"], row
    return configuration


def test_a_grid_reads_the_same_in_the_report_and_in_mlflow(tmp_path):
    path = study_file(tmp_path, "grid", reference=[
        {"match": {"model.attention.name": "none"}, "top1_acc": 60.0},
        {"match": {"model.attention.name": "cbam"}, "top1_acc": 90.0},  # the toy's +30: a magnitude to reproduce
        {"match": {"model.attention.name": "se"}, "top1_err": 38.0}])
    run_study(load_study(path), trainer=Toy())
    configuration = assert_one_meaning("grid")
    assert configuration["attention=none"].data.tags["ablate.verdict"] == "baseline"  # the plain cell
    assert configuration["attention=cbam"].data.tags["ablate.verdict"] == "better"  # +30 points, true effect
    assert configuration["attention=cbam"].data.tags["ablate.effect"] == "reproduced"


def test_a_ladder_reads_each_step_against_the_row_before_in_both(tmp_path):
    path = study_file(tmp_path, "ladder", space={}, study={"seeds": [0, 1, 2], "ladder": True}, cells=[
        {"name": "plain"}, {"name": "+ cbam", "model.attention.name": "cbam"},
        {"name": "+ r8", "model.attention.knobs.reduction": 8}])
    run_study(load_study(path), trainer=Toy())
    configuration = assert_one_meaning("ladder", delta="Δ prev top-1")
    assert configuration["+ cbam"].data.tags["ablate.delta"].endswith("vs plain")
    assert configuration["+ r8"].data.tags["ablate.delta"].endswith("vs + cbam")  # the step, as the report shows


@pytest.mark.parametrize("modules", [["none", "se", "cbam", "eca"], ["se", "cbam", "eca"]])
def test_a_search_reads_the_same_and_names_one_baseline(tmp_path, modules):
    """A search compares its confirmed rows with the plain backbone (study.baseline's default), confirmed on the
    same fresh seeds even when the space never samples it: the report and the configuration runs agree."""
    path = study_file(tmp_path, "search", space={"model.attention.name": modules},
                      study={"sampler": "random", "trials": 10, "seeds": {"min": 2, "max": 3}})
    run_study(load_study(path), trainer=Toy())
    configuration = assert_one_meaning("search")
    table = ablation_table("search")
    assert table.baseline == "attention=none"
    assert table.frame.at["attention=none", "stage"] == "confirmed"
    assert configuration["attention=none"].data.tags["ablate.verdict"] == "baseline"


def test_a_baseline_named_in_advance_is_the_baseline_everywhere(tmp_path):
    """study.baseline names the control before any trial: the report, the configuration runs and seeds on demand
    all compare with it, whatever the data say."""
    path = study_file(tmp_path, "named", study={"seeds": [0, 1, 2], "baseline": "attention=se"})
    run_study(load_study(path), trainer=Toy())
    configuration = assert_one_meaning("named")
    assert ablation_table("named").baseline == "attention=se"
    assert configuration["attention=se"].data.tags["ablate.verdict"] == "baseline"
    assert configuration["attention=none"].data.tags["ablate.delta"].endswith("vs se")


class LossToy(Toy):
    """Toy's trials, also logging val/loss = 1 - val/acc1 (lower is better)."""

    def __call__(self, cfg, **kwargs):
        result = super().__call__(cfg, **kwargs)
        result.metrics["val/loss"] = 1 - result.metrics["val/acc1"]
        return result


def test_the_report_and_mlflow_follow_the_study_metric_not_top1(tmp_path):
    """With study.metric val/loss the table's means and deltas are the loss's, named so in the header and the
    footnote, the same numbers the configuration runs carry (val/loss/mean, /delta); the verdict reads lower as
    better."""
    path = study_file(tmp_path, "loss", study={"seeds": [0, 1, 2], "metric": "val/loss", "direction": "minimize"})
    run_study(load_study(path), trainer=LossToy())
    report = ablation_table("loss")
    table, page = report.frame, report.render("md")
    configuration = {r.data.tags["ablate.cell"]: r for r in runs("loss", configurations=True)
                     if r.data.tags.get("ablate.role") == "configuration"}
    assert report.metric == "val/loss" and "Δ val/loss (95% CI)" in page and "Δ: val/loss (study.metric)" in page
    for row in ("attention=se", "attention=cbam"):
        metrics = configuration[row].data.metrics
        assert table.at[row, "metric"] == pytest.approx(metrics["val/loss/mean"])
        assert table.at[row, DELTA] == pytest.approx(metrics["val/loss/delta"])
        assert table.at[row, "verdict"] == configuration[row].data.tags["ablate.verdict"]
    assert table.at["attention=cbam", "verdict"] == "better"  # a lower loss (Toy: cbam +30 points of accuracy)


class HoldoutToy(Toy):
    """Toy's trials as if selected on data.holdout: val/* the holdout's (10 points off), test/* the reported split's."""

    def __call__(self, cfg, **kwargs):
        result = super().__call__(cfg, **kwargs)
        acc1 = result.metrics["val/acc1"]
        result.metrics |= {"test/acc1": acc1, "test/acc5": 1.0, "val/acc1": acc1 - 0.1}
        return result


def test_after_a_holdout_the_table_and_mlflow_report_the_test_split(tmp_path):
    """Selected on a holdout, every reported number is the test split's: top-1 (and its delta) in the table and on
    the configuration runs (test/acc1/*), never the holdout's val/acc1 that selection saw."""
    path = study_file(tmp_path, "held", study={"seeds": [0, 1]})
    run_study(load_study(path), trainer=HoldoutToy())
    report = ablation_table("held")
    configuration = {r.data.tags["ablate.cell"]: r for r in runs("held", configurations=True)
                     if r.data.tags.get("ablate.role") == "configuration"}
    assert report.metric == "test/acc1" and "on the test split" in report.render("md")
    for row in ("attention=none", "attention=cbam"):
        mean = configuration[row].data.metrics["test/acc1/mean"]
        assert report.frame.at[row, "top-1 acc (%)"] == pytest.approx(mean * 100)
        assert report.frame.at[row, "top-5 acc (%)"] == pytest.approx(100.0)  # test/acc5, not the holdout's
        assert "val/acc1/mean" not in configuration[row].data.metrics


def test_a_ladders_cumulative_delta_is_each_row_against_the_first(tmp_path):
    """Beside each step's delta, a ladder shows where the steps have got to: every row against its first row (not
    each row against itself, as matched controls would read cells that all share attention none)."""
    path = study_file(tmp_path, "steps", space={}, study={"seeds": [0, 1, 2], "ladder": True}, cells=[
        {"name": "plain"}, {"name": "+ wd", "train.weight_decay": 0.0001},  # a step with attention still none
        {"name": "+ cbam", "model.attention.name": "cbam"}])
    run_study(load_study(path), trainer=Toy())
    table = ablation_table("steps")
    assert table.baseline == "plain" and list(table.frame["vs"]) == ["plain"] * 3
    for row in ("+ wd", "+ cbam"):
        assert table.frame.at[row, DELTA] == pytest.approx(
            table.frame.at[row, "top-1 acc (%)"] - table.frame.at["plain", "top-1 acc (%)"])
    assert "cumulative Δ top-1 vs plain (95% CI)" in table.render("md")
