"""Recipes (ablate/config/recipes.py): each a valid, cited bundle of trial keys; the keys a file sets win wherever they
are set; a recipe as a study's search axis; the expansion recorded in flatten(); `ablate recipes`; the rsb study's dry
run beside timm's rows. No training, no store, no model built."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY_BASE, call_main

from ablate.config import RECIPES, ImageFolderData, TrainConfig, TrialConfig, flatten, load_trial, parse_trial
from ablate.errors import AblateError
from ablate.reference import published_top1, setup_gap, setup_of, stated_setup
from ablate.report import dry_run_report, dry_run_table
from ablate.spec import grid_cells, load_study, trial_config
from ablate.study.optuna_setup import fingerprint

STUDIES = Path(__file__).resolve().parent.parent / "studies"


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_trial_and_its_values_are_recorded_in_flatten(name):
    recipe = RECIPES[name]
    cfg = parse_trial({"train": {"recipe": name}})
    flat = flatten(cfg)
    assert flat["train.recipe"] == name
    for dotted, value in recipe.values.items():
        assert flat[dotted] == value, dotted  # what MLflow's params and the cell keys see is what ran
    assert recipe.source and recipe.note  # cited, and honest about what it leaves out
    assert flatten(parse_trial({})) != flat


def test_unknown_recipe_names_the_key_and_the_allowed_ones():
    with pytest.raises(AblateError, match=r"^t\.yaml: train\.recipe: .*'rsb_a9' is not a recipe \(allowed: "
                                          r"he2016_cifar, resnet_classic, hu2018_se, rsb_a1, rsb_a2, rsb_a3"):
        parse_trial({"train": {"recipe": "rsb_a9"}}, "t.yaml")


def test_keys_the_file_sets_win_over_the_recipe_in_a_file_an_override_and_the_notebook(tmp_path):
    raw = {"data": {"name": "imagefolder", "root": "x", "batch_size": 64}, "train": {"lr": 0.001}}
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(raw))  # `ablate train trial.yaml train.recipe=rsb_a2 ...`
    cfg = load_trial(tmp_path / "trial.yaml", ["train.recipe=rsb_a2", "train.epochs=3", "model.drop_path_rate=0.1"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.batch_size, cfg.model.drop_path_rate) == (0.001, 3, 64, 0.1)
    assert (cfg.train.optimizer, cfg.train.loss, cfg.data.repeated_aug) == ("lamb", "bce", 3)  # the rest: the recipe's
    built = TrialConfig(train=TrainConfig(recipe="rsb_a3", lr=0.001), data=ImageFolderData(root="x", batch_size=64))
    assert (built.train.lr, built.data.batch_size, built.data.name) == (0.001, 64, "imagefolder")
    assert (built.train.epochs, built.data.image_size, built.data.test_size) == (100, 160, 224)


def test_a_file_that_chooses_another_loss_does_not_get_the_recipes_bce_threshold():
    cfg = parse_trial({"train": {"recipe": "rsb_a2", "loss": "ce"}})  # an ablation of the loss under A2
    assert (cfg.train.loss, cfg.train.bce_target_threshold, cfg.train.optimizer) == ("ce", None, "lamb")
    assert parse_trial({"train": {"recipe": "rsb_a2"}}).train.bce_target_threshold == 0.2


def _study(tmp_path, **doc) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": {"name": "recipes", "seeds": [0]}, **doc}))
    return path


def test_a_recipe_as_a_search_axis_gives_each_cell_its_recipes_values_and_base_keys_still_win(tmp_path):
    """The rule: the recipe in force is the one the trial's final train.recipe names (a cell's replaces the base's);
    keys the base writes out itself win over every recipe."""
    base = {**TINY_BASE, "train": {"recipe": "rsb_a2", "epochs": 2}}
    spec = load_study(_study(tmp_path, base=base, space={"train.recipe": ["rsb_a2", "rsb_a3"]}))
    cells = {c.params["train.recipe"]: trial_config(spec, c.params, 0) for c in grid_cells(spec)}
    assert set(cells) == {"rsb_a2", "rsb_a3"}
    a2, a3 = cells["rsb_a2"], cells["rsb_a3"]
    assert (a2.train.lr, a2.data.repeated_aug, a2.model.drop_path_rate) == (0.005, 3, 0.05)
    assert (a3.train.lr, a3.data.repeated_aug, a3.model.drop_path_rate) == (0.008, 1, 0.0)  # not the base's rsb_a2
    assert a2.train.epochs == a3.train.epochs == 2  # the base's own key
    assert a2.data.image_size == a3.data.image_size == 16  # TINY_BASE's, over the recipes' 224 and 160
    assert {c.key for c in grid_cells(spec)} == {"{}", '{"train.recipe":"rsb_a3"}'}  # a2 is the base itself


def test_he2016_cifar_is_what_resnet_cifar_table_trained_and_the_study_names_it():
    before = {"data.image_size": 32, "data.batch_size": 128, "data.hflip": 0.5, "train.epochs": 164,
              "train.optimizer": "sgd", "train.lr": 0.1, "train.momentum": 0.9, "train.weight_decay": 0.0001,
              "train.schedule": "multistep", "train.decay_milestones": [82, 123], "train.decay_rate": 0.1}
    assert RECIPES["he2016_cifar"].values == before
    spec = load_study(STUDIES / "resnet_cifar_table.yaml")
    assert spec.base["train"] == {"recipe": "he2016_cifar"}
    for cell in grid_cells(spec):
        flat = flatten(trial_config(spec, cell.params, 0))
        assert {k: flat[k] for k in before} == before
        assert flat["train.warmup_epochs"] == (1 if cell.params["model.backbone"] == "resnet110" else 0)


def test_naming_the_recipe_a_base_spelled_out_keeps_the_study_comparable(tmp_path):
    named = load_study(STUDIES / "resnet_cifar_table.yaml")
    doc = yaml.safe_load((STUDIES / "resnet_cifar_table.yaml").read_text())
    doc["base"]["data"] |= {k.split(".")[1]: v for k, v in RECIPES["he2016_cifar"].values.items() if k[0] == "d"}
    doc["base"]["train"] = {k.split(".")[1]: v for k, v in RECIPES["he2016_cifar"].values.items() if k[0] == "t"}
    spelled = tmp_path / "resnet_cifar_table.yaml"
    spelled.write_text(yaml.safe_dump(doc))
    assert fingerprint(load_study(spelled)) == fingerprint(named)
    doc["base"]["train"] = {"recipe": "he2016_cifar", "epochs": 100}
    spelled.write_text(yaml.safe_dump(doc))
    assert fingerprint(load_study(spelled)) != fingerprint(named)


def test_ablate_recipes_lists_every_recipe_with_its_source(capsys):
    assert call_main("recipes") == (0, "")
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():  # each recipe's block: its name, then its values and its source
        block = f"\n{out}".split(f"\n{name}\n")[1]
        assert block.index(next(iter(recipe.values))) < block.index("  source: " + recipe.source[:30])
    assert out.count("  source: ") == len(RECIPES) and "arXiv:2110.00476, Table 1" in out
    assert call_main("recipes", "rsb_a3") == (0, "")
    one = capsys.readouterr().out
    assert one.startswith("rsb_a3\n") and "rand-m6-mstd0.5-inc1" in one and "rsb_a2" not in one
    assert call_main("recipes", "rsb_a9")[0] == 2
    assert "'rsb_a9' is not a recipe" in capsys.readouterr().err


def test_a_reference_row_stating_a_recipe_is_judged_against_the_configurations_recipe():
    spec = load_study(STUDIES / "rsb_se_resnet50.yaml")
    rows = spec.cfg.reference
    se_a2 = {"train.recipe": "rsb_a2", "model.attention.name": "se"}
    named = [r for r in rows if all(se_a2.get(k) == v for k, v in r["match"].items())]
    assert stated_setup(named)["recipe"] == "rsb_a2"
    ours = setup_of(trial_config(spec, se_a2, 0))
    assert setup_gap(stated_setup(named), ours) == []
    assert published_top1(rows, se_a2, "x", ours) == pytest.approx(80.102)
    a3 = setup_of(trial_config(spec, {**se_a2, "train.recipe": "rsb_a3"}, 0))
    assert a3["image_size"] == 224  # A3 trains at 160 px, its top-1 is measured (and published) at 224
    assert setup_gap(stated_setup(named), a3) == ["epochs", "recipe"]  # rows of A2 say nothing of an A3 run
    assert np.isnan(published_top1(named, se_a2, "x", a3))


def test_the_rsb_study_dry_runs_beside_timms_rows():
    spec = load_study(STUDIES / "rsb_se_resnet50.yaml")
    added = {"none": 0.0, "se": 2.531, "eca": 0.0001}

    def price(spec, params):  # ResNet-50's count, without building it (test_reproduction prices the same way)
        return {"params_m": 25.557 + added[params["model.attention.name"]], "gmacs": 4.089}

    table = dry_run_table(spec, price)
    assert len(table) == 6
    timm = {("rsb_a2", "none"): 79.828, ("rsb_a2", "se"): 80.102, ("rsb_a3", "none"): 78.052,
            ("rsb_a3", "se"): 77.036}
    for (recipe, module), top1 in timm.items():
        row = f"recipe={recipe}, attention={module}"
        assert table.at[row, "paper top-1 acc"] == top1 and table.at[row, "setup"] == "same"
        assert table.at[row, "params match"]
    assert table["paper top-1 acc"].isna().sum() == 2  # ECA: timm publishes no ecaresnet50 under these recipes
    printed = dry_run_report(spec, price)
    assert all(f"| {top1:.2f} " in printed for top1 in timm.values()) and "recipe=rsb_a3, attention=eca" in printed
    cfg = trial_config(spec, {"train.recipe": "rsb_a3"}, 0)
    assert (cfg.train.epochs, cfg.data.image_size, cfg.data.num_classes) == (100, 160, 1000)
