"""Malformed input, end to end: study files, trial configs, search spaces and command-line arguments.

Every case runs the `ablate` command (its entry point in this process, and for one case of each kind a real
`python -m ablate.cli` process, so start-up noise and tracebacks are seen as a user sees them) and must end
with exactly one line on stderr,
`ablate: error: <file>: <key>: ...`, exit code 2, no traceback, nothing on stdout, and neither store
touched: the MLflow store (mlruns/mlflow.db + mlruns/artifacts/) and the Optuna journal
(mlruns/optuna.journal) are hashed before and after, byte for byte with mtimes, and no file may appear.

Most cases run (one after the other) in one module-scoped folder that already holds real stores from a
tiny study; the `empty` cases run in a fresh folder and must not create mlruns/ (or any other file).
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import TINY_BASE, call_main  # `ablate` is the package here
from helpers import ablate as run_ablate

import ablate

REPO = Path(ablate.__file__).resolve().parents[1]  # the shipped studies/ and search_spaces/

TINY_TRIAL = copy.deepcopy(TINY_BASE) | {"tracking": {"experiment": "bad-inputs"}}
DIR = object()  # a `files` value: make a directory, not a file
FIFO = object()  # ... a named pipe (reading one blocks until something writes to it)


class Link(str):
    """A `files` value: a symbolic link to this target (two naming each other are a loop, for root too)."""
PASSWORD = "s3cretpw"
PG_URL = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"  # nothing listens on port 1: refused at once


# one case of each kind as a real process; the rest through the entry point in this process (2 s saved each)
REAL_PROCESS = {"study-yaml-syntax", "base-unknown-backbone", "space-knob-exceeds-channels", "include-unknown-module",
                "trial-cifar10-missing-root", "run-storage-unreachable-postgres", "run-tracking-uri-unopenable",
                "run-plugin-missing", "inspect-gate-at-conv", "report-unknown-by-key", "cli-unknown-option",
                "study-missing-file",
                # round two: file text (encoding, YAML limits, duplicate keys), values that do not fit, configs that
                # fail only in training, stores, outputs, other commands and the environment, a different study
                # (the other classes' cases take the same code path in-process: ~25 s a process here is the budget's)
                "study-yaml-deep-nesting", "base-accelerator-gpu", "env-plugins-missing",
                # round three: the system refusing a path the user named, a tracking store that cannot be created
                "study-file-name-too-long", "run-tracking-uri-under-proc"}


def ablate_cli(*args, cwd, env=None):
    # no __pycache__ from plugins
    return run_ablate(*args, cwd=cwd, timeout=600, env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})


# ---------------------------------------------------------------- the stores every case must leave alone

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A folder whose mlruns/ holds both stores, written by a real tiny study (none / se, one seed)."""
    folder = tmp_path_factory.mktemp("stores")
    (folder / "tiny.yaml").write_text(yaml.safe_dump({
        "study": {"name": "tiny", "seeds": [0]}, "base": TINY_BASE | {"tracking": {"log_weights": True}},
        "space": {"model.attention.name": ["none", "se"]}}))  # weights: the artifacts are part of what is guarded
    proc = ablate_cli("run", "tiny.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (folder / "mlruns" / "mlflow.db").is_file() and (folder / "mlruns" / "optuna.journal").is_file()
    assert any((folder / "mlruns" / "artifacts").rglob("model.pt"))
    # and a searched study of one trial (in this process: a second start-up costs more than the trial)
    (folder / "tiny-search.yaml").write_text(yaml.safe_dump({
        "study": {"name": "tiny-search", "sampler": "random", "trials": 1, "confirm": {"top": 0}}, "base": TINY_BASE,
        "space": {"model.attention.name": ["none", "se"], "train.lr": {"low": 0.01, "high": 0.1, "log": True}}}))
    assert call_main("run", "tiny-search.yaml", cwd=folder) == (0, "")
    return folder


def snapshot(folder: Path) -> dict:
    """Every path under mlruns/: directories by name, files by size, mtime and SHA-256."""
    state = {}
    root = folder / "mlruns"
    for path in sorted(root.rglob("*")) if root.exists() else []:
        rel = str(path.relative_to(folder))
        if path.is_dir():
            state[rel] = "dir"
        else:
            st = path.stat()
            state[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def outside_stores(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.relative_to(folder).parts[0] != "mlruns"}


# ---------------------------------------------------------------- case builders

def case(id, args, expect, files=None, where="stores", forbid=(), env=None):
    """args: the command line ('{repo}' is the repository); expect: substrings of the error line; env: variables
    the command runs with."""
    return pytest.param(list(args), tuple(expect), dict(files or {}), where, tuple(forbid), dict(env or {}), id=id)


def study_doc(name, mutate=None):
    doc = {"study": {"name": name, "seeds": [0]}, "base": copy.deepcopy(TINY_BASE),
           "space": {"model.attention.name": ["none", "se"]}}
    if mutate:
        mutate(doc)
    return doc


def bad_study(id, mutate, *expect, args=(), files=None, where="stores", text=None, forbid=()):
    """`ablate run <id>.yaml`: the error names the study file."""
    name = f"{id}.yaml"
    content = text if text is not None else study_doc(id, mutate)
    return case(id, ["run", name, *args], (name, *expect), {name: content, **(files or {})}, where, forbid)


def bad_trial(id, mutate, *expect, args=(), where="stores", text=None, named=True):
    """`ablate train <id>.yaml`: the error names the trial config (named=False: the command line is the source)."""
    name = f"{id}.yaml"
    doc = copy.deepcopy(TINY_TRIAL)
    if mutate:
        mutate(doc)
    content = text if text is not None else doc
    return case(id, ["train", name, *args], ((name,) if named else ()) + expect, {name: content}, where)


def ok_study(id):
    return {f"{id}.yaml": study_doc(id, lambda d: d.update(space={"model.attention.name": ["se"]}))}


def se_base(**attention):
    """Mutator: the base trial puts SE (or the given attention spec) into the backbone; no space."""
    def mutate(doc):
        doc["base"]["model"]["attention"] = {"name": "se", **attention}
        doc["space"] = {}
    return mutate


INSPECT = ["inspect", "resnet10_narrow", "--image-size", "32"]

CASES = [
    # ------------------------------------------------------------ study files (ablate run)
    bad_study("study-yaml-syntax", None, "YAML syntax error at line 4, column 1",
              text="study:\n  name: x\n  seeds: [0, 1\n"),
    bad_study("study-yaml-tab", None, "YAML syntax error at line 2", text="study:\n\tname: x\n"),
    bad_study("study-top-level-list", None, "expected a mapping of keys at the top level, got list",
              text="- study\n- base\n"),
    bad_study("study-empty-file", None, "study: Field required", text=""),
    bad_study("study-unknown-section", lambda d: d.update(spaces=d.pop("space")),
              "spaces: unknown key (did you mean 'space'?)"),
    bad_study("study-unknown-key", lambda d: d["study"].update(metrc="val/acc1"),
              "study.metrc: unknown key (did you mean 'metric'?)"),
    bad_study("study-seeds-wrong-type", lambda d: d["study"].update(seeds="zero"),
              "study.seeds: Input should be a valid list"),
    bad_study("study-seeds-empty", lambda d: d["study"].update(seeds=[]), "study.seeds:"),
    bad_study("study-baseline-names-no-cell", lambda d: d["study"].update(baseline="attention=cbam"),
              "study.baseline: 'attention=cbam' names no configuration of the grid", "attention=none"),
    # results bought cheaply (seeds on demand, cost limits, warm starts) and the report's columns
    bad_study("study-seeds-on-demand-max-below-min", lambda d: d["study"].update(seeds={"min": 4, "max": 3}),
              "study.seeds.max: Value error, max (3) is below min (4)"),
    bad_study("study-seeds-on-demand-min-one", lambda d: d["study"].update(seeds={"min": 1, "max": 3}),
              "study.seeds.min: Input should be greater than or equal to 2"),
    bad_study("study-seeds-on-demand-until", lambda d: d["study"].update(seeds={"min": 2, "until": "tired"}),
              "study.seeds.until: 'tired' is not allowed ('decided')"),
    bad_study("study-constraint-unknown", lambda d: d["study"].update(constraints={"flops": {"max": 1}}),
              "study.constraints.flops", "'params_m', 'gmacs', 'params_delta_pct', 'gmacs_delta_pct', "
              "'step_time_ratio' or 'peak_mem_mb'"),
    bad_study("study-constraint-bound-key", lambda d: d["study"].update(constraints={"params_m": {"below": 1}}),
              "study.constraints.params_m.below: unknown key (allowed: min, max)"),
    bad_study("study-warm-start-grid", lambda d: d["study"].update(warm_start="tiny"),
              "study.warm_start: a grid runs every cell"),
    bad_trial("trial-val-every-zero", lambda d: d["train"].update(val_every=0), "train.val_every: Input should be "
              "greater than 0"),
    bad_study("study-pruner-unknown", lambda d: d["study"].update(pruner="asha2"),
              "study.pruner: 'asha2' is not allowed"),
    bad_study("study-warm-start-missing", lambda d: d.update(space={"train.lr": [0.01, 0.1]}) or d["study"].update(
        sampler="random", trials=2, warm_start="nosuch"), "study.warm_start: no study 'nosuch' in the storage"),
    bad_study("study-trials-wrong-type", lambda d: d["study"].update(trials="many"), "study.trials:", "many"),
    bad_study("study-unknown-sampler", lambda d: d["study"].update(sampler="annealing"),
              "study.sampler: 'annealing' is not allowed"),
    bad_study("study-unknown-direction", lambda d: d["study"].update(direction="up"),
              "study.direction: 'up' is not allowed"),
    bad_study("study-heartbeat-zero", lambda d: d["study"].update(heartbeat_interval=0),
              "study.heartbeat_interval:", "greater than or equal to 1"),
    bad_study("study-db-outage-negative", lambda d: d["study"].update(db_outage_s=-1),
              "study.db_outage_s:", "greater than or equal to 0"),
    bad_study("study-adjust-unknown", lambda d: d["study"].update(adjust="bonferroni"),
              "study.adjust: 'bonferroni' is not allowed"),
    bad_study("study-min-effect-negative", lambda d: d["study"].update(min_effect=-0.5),
              "study.min_effect:", "greater than 0"),
    bad_study("study-missing-name", lambda d: d["study"].pop("name"), "study.name: Field required"),
    bad_study("study-name-bad-characters", lambda d: d["study"].update(name="my study/1"),
              "study.name: String should match pattern", "my study/1"),
    bad_study("study-unknown-metric", lambda d: d["study"].update(metric="val/acc9"),
              "study.metric: no trial logs 'val/acc9'"),
    # the bad key is the objective's direction; the message must not name a pydantic union branch
    bad_study("study-objective-bad-direction",
              lambda d: d["study"].update(metric=[{"metric": "val/acc1", "direction": "sideways"}]),
              "study.metric", "'sideways'"),
    bad_study("study-pruner-multi-objective", lambda d: d["study"].update(
        sampler="tpe", trials=2, pruner="median",
        metric=[{"metric": "val/acc1"}, {"metric": "model/gmacs", "direction": "minimize"}]),
        "study.pruner: Optuna cannot prune multi-objective studies"),
    # selection apart from evaluation: pruning only in a search, a search's control named in advance, no
    # selection-only metric as the reported one
    bad_study("study-pruner-grid", lambda d: d["study"].update(pruner="median"),
              "study.pruner: a grid estimates each configuration over its seeds", "the seeds the pruner let finish",
              "use pruner: none", "sampler tpe, random or gp"),
    bad_study("study-confirm-grid", lambda d: d["study"].update(confirm={"top": 2}),
              "study.confirm: a grid runs every configuration on every seed", "sampler tpe, random or gp"),
    bad_study("study-confirm-one-seed", lambda d: d["study"].update(sampler="random", trials=2,
                                                                      confirm={"seeds": 1}),
              "study.confirm.seeds: Input should be greater than or equal to 2"),
    bad_study("study-baseline-search-row-label", lambda d: d["study"].update(sampler="random", trials=2,
                                                                               baseline="plain"),
              "study.baseline: a search names its control in advance as key=value pairs", "'plain'"),
    bad_study("study-baseline-search-unknown-key", lambda d: d["study"].update(sampler="random", trials=2,
                                                                                 baseline="train.lrr=0.1"),
              "study.baseline: train.lrr: unknown key (did you mean 'lr'?)"),
    bad_study("study-metric-selection-only", lambda d: d["study"].update(metric="val/acc1_best"),
              "study.metric: 'val/acc1_best' is a max over epochs on the split that chose it", "val/acc1"),
    bad_study("study-search-without-trials", lambda d: d["study"].update(sampler="tpe"),
              "study.trials: sampler 'tpe' needs a number of trials"),
    bad_study("study-cells-wrong-type", lambda d: d.update(cells={"train.lr": 0.1}),
              "cells: Input should be a valid list"),
    bad_study("study-include-not-a-list", lambda d: d.update(include="search_spaces/attention.yaml"),
              "include: Input should be a valid list"),
    # base: the trial config every trial starts from
    bad_study("base-unknown-key", lambda d: d["base"]["train"].update(lr_=0.1),
              "base: train.lr_: unknown key (did you mean 'lr'?)"),
    bad_study("base-wrong-type", lambda d: d["base"]["train"].update(epochs="ten"),
              "base: train.epochs: Input should be a valid integer", "'ten'"),
    bad_study("base-not-a-mapping", lambda d: d.update(base=["resnet18"]), "base: Input should be a valid dictionary"),
    bad_study("base-unknown-dataset", lambda d: d["base"]["data"].update(name="mnist"),
              "base: data.name: 'mnist' is not allowed"),
    # checks that need the backbone or the data: still before any store is touched
    bad_study("base-unknown-backbone", lambda d: d["base"]["model"].update(backbone="resnet_nope"),
              "model.backbone", "resnet_nope"),
    bad_study("base-cifar10-missing-root", lambda d: d["base"]["data"].update(name="cifar10", root="no-cifar-here"),
              "data.root", "no-cifar-here"),
    bad_study("base-stage-does-not-exist", se_base(stages=[9]), "stages", "stage 9 does not exist"),
    bad_study("base-gate-module-at-conv", se_base(position="conv"), "model.attention.position", "'conv'"),
    # search spaces
    bad_study("space-unknown-module", lambda d: d["space"].update({"model.attention.name": ["none", "sse"]}),
              "space.model.attention.name: unknown attention module 'sse'"),
    bad_study("space-unknown-recipe", lambda d: d["space"].update({"train.recipe": ["rsb_a3", "rsb_a9"]}),
              "space: train.recipe: Value error, 'rsb_a9' is not a recipe (allowed: "),
    bad_study("space-module-not-a-list", lambda d: d["space"].update({"model.attention.name": "se"}),
              "space.model.attention.name", "Input should be a valid list"),
    bad_study("space-unknown-knob", lambda d: d["space"].update({"model.attention.knobs.kernal_size": [3]}),
              "space.model.attention.knobs.kernal_size: no module in the study takes knob 'kernal_size'"),
    bad_study("space-knob-out-of-range", lambda d: d["space"].update({"model.attention.knobs.reduction": [0, 16]}),
              "space.model.attention.knobs.reduction", "se.reduction=0 is out of range",
              forbid=["None channels"]),  # no backbone yet: there is no channel count to quote
    bad_study("space-knob-even-kernel", lambda d: d["space"].update(
        {"model.attention.name": ["eca"], "model.attention.knobs.kernel_size": [3, 4]}),
        "space.model.attention.knobs.kernel_size", "eca.kernel_size=4 must be odd"),
    # 1024 > the 256 channels of resnet10_narrow's last stage: known from the backbone before any trial
    bad_study("space-knob-exceeds-channels", lambda d: d.update(
        space={"model.attention.name": ["se"], "model.attention.knobs.reduction": [1024]}),
        "model.attention.knobs.reduction", "1024"),
    bad_study("space-empty-choices", lambda d: d["space"].update({"train.lr": []}), "space.train.lr: empty choices"),
    bad_study("space-range-low-above-high",
              lambda d: d["space"].update({"train.lr": {"low": 0.5, "high": 0.1, "step": 0.1}}),
              "space.train.lr: range low 0.5 > high 0.1"),
    bad_study("space-grid-range-without-step", lambda d: d["space"].update({"train.lr": {"low": 0.01, "high": 0.1}}),
              "space.train.lr: a grid needs choices or a range with step"),
    # the bad key is the range's 'hi'; the message must not name a pydantic union branch
    bad_study("space-range-unknown-key", lambda d: d["space"].update({"train.lr": {"low": 0.01, "hi": 0.1}}),
              "space.train.lr", ".hi", "unknown key"),
    bad_study("space-scalar-not-choices", lambda d: d["space"].update({"train.lr": 0.1}),
              "space.train.lr", "Input should be a valid list"),
    bad_study("space-unknown-trial-key", lambda d: d["space"].update({"train.lrr": [0.1]}),
              "space: train.lrr: unknown key (did you mean 'lr'?)"),
    bad_study("space-not-a-mapping", lambda d: d.update(space=None), "space: Input should be a valid dictionary"),
    # a sampler that searches needs something to search
    bad_study("space-empty-for-search", lambda d: (d.update(space={}), d["study"].update(sampler="tpe", trials=1)),
              "space"),
    # include: search space files
    bad_study("include-missing-file", lambda d: d.update(include=["search_spaces/nosuch.yaml"]),
              "include: no search space file 'search_spaces/nosuch.yaml'"),
    case("include-yaml-syntax", ["run", "include-yaml-syntax.yaml"],
         ["inc-syntax.yaml", "YAML syntax error at line"],
         {"include-yaml-syntax.yaml": study_doc("include-yaml-syntax", lambda d: d.update(include=["inc-syntax.yaml"])),
          "inc-syntax.yaml": "space:\n  train.lr: [0.1, 0.2\n"}),
    case("include-top-level-list", ["run", "include-top-level-list.yaml"],
         ["inc-list.yaml", "expected a mapping of keys at the top level, got list"],
         {"include-top-level-list.yaml": study_doc("include-top-level-list",
                                                   lambda d: d.update(include=["inc-list.yaml"])),
          "inc-list.yaml": "- train.lr\n- train.epochs\n"}),
    case("include-wrong-type", ["run", "include-wrong-type.yaml"], ["inc-type.yaml", "space.train.lr"],
         {"include-wrong-type.yaml": study_doc("include-wrong-type", lambda d: d.update(include=["inc-type.yaml"])),
          "inc-type.yaml": {"space": {"train.lr": 0.1}}}),
    # the bad module is in the included file: that file is the one to name
    case("include-unknown-module", ["run", "include-unknown-module.yaml"],
         ["inc-module.yaml", "model.attention.name", "unknown attention module 'sse'"],
         {"include-unknown-module.yaml": study_doc("include-unknown-module",
                                                   lambda d: d.update(space={}, include=["inc-module.yaml"])),
          "inc-module.yaml": {"space": {"model.attention.name": ["none", "sse"]}}}),
    # files that are not there
    case("study-missing-file", ["run", "nosuch-study.yaml"], ["nosuch-study.yaml", "no such file"], where="empty"),
    case("study-is-a-directory", ["run", "a-folder.yaml"], ["a-folder.yaml"], {"a-folder.yaml": DIR}),
    # command-line overrides of a study
    case("study-override-bad-sampler", ["run", "{repo}/studies/se_reduction.yaml", "study.sampler=annealing"],
         ["se_reduction.yaml", "study.sampler: 'annealing' is not allowed"]),
    case("study-override-empty-choices",
         ["run", "{repo}/studies/se_reduction.yaml", "space.model.attention.knobs.reduction=[]"],
         ["se_reduction.yaml", "space.model.attention.knobs.reduction: empty choices"]),
    case("study-override-trials-zero", ["run", "{repo}/studies/attention_search.yaml", "study.trials=0"],
         ["attention_search.yaml", "study.trials:", "greater than or equal to 1"]),
    case("study-override-without-equals", ["run", "{repo}/studies/se_reduction.yaml", "train.lr"],
         ["command line", "override 'train.lr' is not of the form key.path=value"]),

    # files that are not UTF-8 text
    bad_study("study-latin1", None, "not UTF-8 text (byte 0xe9 at line 1, column 6)",
              text="# caf\u00e9\nstudy: {name: x}\n".encode("latin-1")),
    bad_study("study-utf16-bom", None, "UTF-16 text", text="study: {name: x}\n".encode("utf-16")),
    bad_study("study-random-bytes", None, "not UTF-8 text", text=bytes(range(128, 256)) * 4),
    # pathological YAML: limits on size, depth and alias expansion, before anything is built
    bad_study("study-yaml-deep-nesting", None, "nested deeper than 64 levels",
              text="study: {name: x}\nbase: " + "[" * 5000 + "]" * 5000 + "\n"),
    bad_study("study-yaml-billion-laughs", None, "more than 100000 values once aliases are expanded",
              text="study: {name: x}\nspace:\n  l0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
                   + "".join(f"  l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
                   + "  train.lr: *a8\n"),
    bad_study("study-yaml-too-big", None, "bytes, more than the 1048576 a config file may have",
              text="study: {name: x}\n" + "#" * (1 << 20) + "\n"),
    # duplicate keys: the user meant both; refuse, naming the key and both lines
    bad_study("study-duplicate-key", None, "line 3: duplicate key 'seeds' (first at line 2)",
              text="study:\n  seeds: [0]\n  seeds: [1]\n  name: x\n"),
    bad_study("study-duplicate-space", None, "line 4: duplicate key 'space' (first at line 2)",
              text="study: {name: x}\nspace: {model.attention.name: [se]}\nbase: {}\nspace: {train.lr: [0.1]}\n"),
    case("include-duplicate-key", ["run", "include-duplicate-key.yaml"], ["inc-dup.yaml", "duplicate key 'train.lr'"],
         {"include-duplicate-key.yaml": study_doc("include-duplicate-key",
                                                  lambda d: d.update(include=["inc-dup.yaml"])),
          "inc-dup.yaml": "space:\n  train.lr: [0.1]\n  train.lr: [0.2]\n"}),
    # numbers at the edges
    bad_study("base-seed-too-big", lambda d: d["base"]["train"].update(seed=2**64), "train.seed", "4294967295"),
    bad_study("base-min-lr-inf", lambda d: d["base"]["train"].update(min_lr=float("inf")),
              "train.min_lr: Input should be a finite number"),
    bad_study("base-image-size-huge", lambda d: d["base"]["data"].update(image_size=100000),
              "data.image_size: Input should be less than or equal to 2048"),
    bad_study("space-range-step-zero", lambda d: d["space"].update({"train.lr": {"low": 0.1, "high": 0.2, "step": 0}}),
              "space.train.lr", "step", "greater than 0"),
    bad_study("space-range-step-negative",
              lambda d: d["space"].update({"train.lr": {"low": 0.1, "high": 0.2, "step": -0.1}}),
              "space.train.lr", "step", "greater than 0"),
    bad_study("space-range-step-nan",
              lambda d: d["space"].update({"train.lr": {"low": 0.1, "high": 0.2, "step": float("nan")}}),
              "space.train.lr", "step", "finite number"),
    bad_study("space-range-step-tiny",
              lambda d: d["space"].update({"train.lr": {"low": 0.1, "high": 0.2, "step": 1e-300}}),
              "space.train.lr: step 1e-300 makes", "at most 10000 values in a grid"),
    bad_study("space-range-high-inf", lambda d: d["space"].update({"train.lr": {"low": 0.1, "high": float("inf")}}),
              "space.train.lr", "high", "finite number"),
    # spaces whose values do not fit their key: refused at load, before any store
    bad_study("space-float-range-for-int-key", lambda d: (d["study"].update(sampler="random", trials=2),
                                                          d["space"].update({"train.epochs": {"low": 1, "high": 3}})),
              "space.train.epochs: a float range, but train.epochs takes whole numbers: give the range type: int"),
    bad_study("space-float-range-for-int-knob", lambda d: (
        d["study"].update(sampler="random", trials=2), d["space"].update(
            {"model.attention.name": ["se"], "model.attention.knobs.reduction": {"low": 4, "high": 16}})),
        "space.model.attention.knobs.reduction", "takes whole numbers: give the range type: int"),
    bad_study("space-log-with-step", lambda d: (d["study"].update(sampler="random", trials=2), d["space"].update(
        {"train.lr": {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}})),
        "space.train.lr: log: true samples on a log scale, step on an even one"),
    bad_study("space-int-range-fractional", lambda d: d["space"].update(
        {"train.epochs": {"low": 1, "high": 3, "step": 0.5, "type": "int"}}),
        "space.train.epochs: a range of type int takes whole numbers"),
    # structure in the wrong place
    bad_study("space-module-nested-list", lambda d: d["space"].update({"model.attention.name": [["se"], "none"]}),
              "space.model.attention.name: ['se'] is not a module name"),
    bad_study("space-module-range", lambda d: d["space"].update({"model.attention.name": {"low": 1, "high": 2}}),
              "space.model.attention.name: attention modules are choices"),
    # silently wrong tables
    bad_study("study-cells-same-name", lambda d: d.update(space={}, cells=[
        {"name": "mine", "model.attention.name": "se"}, {"name": "mine", "model.attention.name": "eca"}]),
        "cells: two configurations are both named 'mine'", "give each its own name"),
    bad_study("study-seed-twice", lambda d: d["study"].update(seeds=[0, 1, 0]),
              "study.seeds", "seed 0 is listed twice"),
    bad_study("study-grid-with-trials", lambda d: d["study"].update(trials=3),
              "study.trials (or --trials): a grid runs every cell x seed (2 trials here)"),
    case("run-trials-for-grid", ["run", "cli-trials-grid.yaml", "--trials", "5"],
         ["cli-trials-grid.yaml", "study.trials (or --trials): a grid runs every cell x seed"],
         ok_study("cli-trials-grid")),
    bad_study("reference-unknown-key", lambda d: d.update(reference=[
        {"match": {"model.attention.name": "se"}, "top1_er": 23.1}]),
        "reference[0].top1_er: unknown reference column (did you mean 'top1_err'?)"),
    bad_study("reference-number-as-string", lambda d: d.update(reference=[
        {"match": {"model.attention.name": "se"}, "top1_err": "23.1"}]),
        "reference[0].top1_err: '23.1' is not a number"),
    bad_study("reference-list-value", lambda d: d.update(reference=[
        {"match": {"model.attention.name": "se"}, "top1_err": [23.1, 22.0]}]),
        "reference[0].top1_err: [23.1, 22.0] is not a number"),
    bad_study("reference-match-nothing", lambda d: d.update(reference=[
        {"match": {"model.attention.name": "cbam"}, "top1_err": 22.7}]),
        "reference[0]: match: {'model.attention.name': 'cbam'} names no configuration of the grid"),

    # configs that would only fail once training starts: one line before any trial
    bad_study("base-accelerator-gpu", lambda d: d["base"]["train"].update(accelerator="gpu"),
              "cell attention=none: train:", "gpu"),
    bad_study("base-precision-unknown-device", lambda d: d["base"]["train"].update(accelerator="tpu"),
              "cell attention=none: train:", "torch_xla"),
    bad_study("base-limit-val-batches-zero", lambda d: d["base"]["train"].update(limit_val_batches=0),
              "base.train.limit_val_batches: 0 turns validation off"),
    bad_study("base-limit-train-batches-negative", lambda d: d["base"]["train"].update(limit_train_batches=-1),
              "base: train.limit_train_batches", "-1 is neither a number of batches"),
    bad_study("base-train-size-too-big", lambda d: d["base"]["data"].update(name="digits", train_size=5000),
              "data.train_size: 5000 is more than the 1438 samples available"),
    bad_study("base-unknown-auto-augment", lambda d: d["base"]["data"].update(auto_augment="randaug-m9"),
              "data.auto_augment: 'randaug-m9' is not a timm auto-augment spec"),
    # the training parts ResNet-strikes-back recipes need: the loss, repeated augmentation, the evaluated input
    bad_trial("trial-loss-unknown", lambda d: d["train"].update(loss="focal"),
              "train.loss: 'focal' is not allowed ('ce' or 'bce')"),
    bad_trial("trial-bce-threshold-without-bce", lambda d: d["train"].update(bce_target_threshold=0.2),
              "train.bce_target_threshold: ", "train.loss is 'ce' (set train.loss: bce, or leave "
              "bce_target_threshold null)"),
    bad_study("base-bce-threshold-not-a-fraction",
              lambda d: d["base"]["train"].update(loss="bce", bce_target_threshold=1.5),
              "base: train.bce_target_threshold: Input should be less than 1"),
    bad_study("space-bce-threshold-without-bce", lambda d: d["space"].update({"train.bce_target_threshold": [0.2]}),
              "train.bce_target_threshold: ", "train.loss is 'ce'"),
    bad_trial("trial-repeated-aug-zero", lambda d: d["data"].update(repeated_aug=0),
              "data.repeated_aug: Input should be greater than or equal to 1"),
    bad_study("base-repeated-aug-not-a-number", lambda d: d["base"]["data"].update(repeated_aug="three"),
              "base: data.repeated_aug: Input should be a valid integer", "'three'"),
    bad_trial("trial-test-size-too-small", lambda d: d["data"].update(test_size=4),
              "data.test_size: Input should be greater than or equal to 8"),
    bad_trial("trial-crop-pct-above-one", lambda d: d["data"].update(crop_pct=1.5),
              "data.crop_pct: Input should be less than or equal to 1"),
    # a model whose shapes are fixed at the trained side (BoTNet's position embeddings) cannot be evaluated at another
    bad_study("base-test-size-fixed-shape-model",
              lambda d: d["base"]["data"].update(image_size=32, test_size=40) or d.update(
                  space={"model.attention.name": ["none", "bot_mhsa"]}),
              "cell attention=bot_mhsa: data.test_size: resnet10_narrow with bot_mhsa, built for 32 px inputs, "
              "cannot run on 40 px ones"),
    bad_trial("trial-test-size-fixed-shape-model",
              lambda d: d["model"].update(attention={"name": "bot_mhsa"}) or d["data"].update(image_size=32,
                                                                                              test_size=40),
              "data.test_size: resnet10_narrow with bot_mhsa, built for 32 px inputs, cannot run on 40 px ones"),
    bad_trial("trial-crop-pct-zero", lambda d: d["data"].update(crop_pct=0), "data.crop_pct: Input should be "
              "greater than 0"),
    bad_study("base-checkpoint-not-weights", lambda d: d["base"]["model"].update(checkpoint="notweights.pt"),
              "model.checkpoint: notweights.pt is not a weights file torch can load",
              files={"notweights.pt": "model: {backbone: resnet18}\n"}),
    bad_study("space-checkpoint-not-weights", lambda d: d["space"].update({"model.checkpoint": ["notweights2.pt"]}),
              "model.checkpoint: notweights2.pt is not a weights file", files={"notweights2.pt": b"\x00" * 64}),
    # a different study under a name already in the store
    case("run-search-space-changed", ["run", "search-changed.yaml"],
         ["search-changed.yaml", "space.model.attention.name: study 'tiny-search' in the store samples it from "
          "choices ['none', 'se'], this file from choices ['none', 'se', 'eca']"],
         {"search-changed.yaml": {"study": {"name": "tiny-search", "sampler": "random", "trials": 2},
                                  "base": TINY_BASE, "space": {"model.attention.name": ["none", "se", "eca"],
                                                               "train.lr": {"low": 0.01, "high": 0.1, "log": True}}}}),
    case("run-search-space-log-changed", ["run", "search-log.yaml"],
         ["search-log.yaml", "space.train.lr: study 'tiny-search' in the store samples it from a log range"],
         {"search-log.yaml": {"study": {"name": "tiny-search", "sampler": "random", "trials": 2}, "base": TINY_BASE,
                              "space": {"model.attention.name": ["none", "se"],
                                        "train.lr": {"low": 0.01, "high": 0.1}}}}),
    case("run-search-space-range-for-choices", ["run", "search-kind.yaml"],
         ["search-kind.yaml", "space.train.lr:", "this file from choices [0.01, 0.1]"],
         {"search-kind.yaml": {"study": {"name": "tiny-search", "sampler": "random", "trials": 2}, "base": TINY_BASE,
                               "space": {"model.attention.name": ["none", "se"], "train.lr": [0.01, 0.1]}}}),
    case("run-direction-changed", ["run", "tiny-min.yaml"], ["tiny-min.yaml", "study.direction", "minimize"],
         {"tiny-min.yaml": study_doc("tiny", lambda d: d["study"].update(direction="minimize"))}),
    case("run-metric-changed", ["run", "tiny-loss.yaml"], ["tiny-loss.yaml", "study.metric: val/acc1 maximize -> "
                                                          "val/acc5 maximize"],
         {"tiny-loss.yaml": study_doc("tiny", lambda d: d["study"].update(metric="val/acc5"))}),
    case("run-base-changed", ["run", "tiny-epochs.yaml"], ["tiny-epochs.yaml", "base.train.epochs: 1 -> 2"],
         {"tiny-epochs.yaml": study_doc("tiny", lambda d: d["base"]["train"].update(epochs=2))}),

    # found hunting: include chains, a study file included as a search space, a name too long for a folder
    case("include-chain", ["run", "include-chain.yaml"],
         ["inc-chain.yaml: include: a search space file holds only space:"],
         {"include-chain.yaml": study_doc("include-chain", lambda d: d.update(include=["inc-chain.yaml"])),
          "inc-chain.yaml": {"include": ["inc-leaf.yaml"]}, "inc-leaf.yaml": {"space": {"train.lr": [0.1]}}}),
    case("include-a-study-file", ["run", "include-a-study-file.yaml"],
         ["inc-study.yaml: base: a search space file holds only space:"],
         {"include-a-study-file.yaml": study_doc("include-a-study-file",
                                                 lambda d: d.update(include=["inc-study.yaml"])),
          "inc-study.yaml": study_doc("inc-study")}),
    bad_study("study-name-too-long", lambda d: d["study"].update(name="n" * 300), "study.name",
              "at most 128 characters"),
    case("run-override-twice", ["run", "cli-twice.yaml", "train.lr=0.1", "train.lr=0.2"],
         ["command line: train.lr is given twice ('0.1' and '0.2'); keep one"], ok_study("cli-twice")),
    case("run-trials-flag-and-override",
         ["run", "{repo}/studies/attention_search.yaml", "study.trials=5", "--trials", "3"],
         ["command line: study.trials is given twice ('5' and '3')"]),

    # ------------------------------------------------------------ trial configs (ablate train)
    bad_trial("trial-yaml-syntax", None, "YAML syntax error at line 2, column 6",
              text="model: {backbone: resnet18\ntrain: {epochs: 1}\n"),
    bad_trial("trial-top-level-scalar", None, "expected a mapping of keys at the top level, got str",
              text="resnet18\n"),
    bad_trial("trial-unknown-section", lambda d: d.update(trainer=d.pop("train")),
              "trainer: unknown key (did you mean 'train'?)"),
    bad_trial("trial-unknown-key", lambda d: d["train"].update(epohcs=2),
              "train.epohcs: unknown key (did you mean 'epochs'?)"),
    bad_trial("trial-epochs-wrong-type", lambda d: d["train"].update(epochs="ten"),
              "train.epochs: Input should be a valid integer", "'ten'"),
    bad_trial("trial-negative-lr", lambda d: d["train"].update(lr=-0.1), "train.lr: Input should be greater than 0"),
    bad_trial("trial-unknown-optimizer", lambda d: d["train"].update(optimizer="adamax"),
              "train.optimizer: 'adamax' is not allowed"),
    bad_trial("trial-unknown-recipe", lambda d: d["train"].update(recipe="rsb_a9"),
              "train.recipe: Value error, 'rsb_a9' is not a recipe (allowed: he2016_cifar, resnet_classic, hu2018_se, "
              "rsb_a1, rsb_a2, rsb_a3"),
    bad_trial("trial-bool-wrong-type", lambda d: d["tracking"].update(log_weights="maybe"),
              "tracking.log_weights: Input should be a valid boolean"),
    bad_trial("trial-system-metrics-not-a-bool", lambda d: d["tracking"].update(system_metrics="often"),
              "tracking.system_metrics: Input should be a valid boolean"),
    bad_trial("trial-section-not-a-mapping", lambda d: d.update(train=5), "train: Input should be a valid dictionary"),
    bad_trial("trial-drop-rate-out-of-range", lambda d: d["model"].update(drop_rate=1.5), "model.drop_rate:"),
    bad_trial("trial-seed-negative", lambda d: d["train"].update(seed=-1),
              "train.seed: Input should be greater than or equal to 0"),
    bad_trial("trial-limit-train-batches-negative", lambda d: d["train"].update(limit_train_batches=-1),
              "train.limit_train_batches", "-1 is neither a number of batches"),
    bad_trial("trial-override-deep-nesting", None, "command line: train.lr: line 1: nested deeper than 64 levels",
              args=["train.lr=" + "[" * 200 + "]" * 200], named=False),
    bad_trial("trial-latin1", None, "not UTF-8 text", text="# d\u00e9j\u00e0\ntrain: {epochs: 1}\n".encode("latin-1")),
    bad_trial("trial-duplicate-section", None, "duplicate key 'train' (first at line 1)",
              text="train: {epochs: 1}\ntrain: {epochs: 2}\n"),
    bad_trial("trial-unknown-dataset", lambda d: d["data"].update(name="mnist"), "data.name: 'mnist' is not allowed"),
    bad_trial("trial-unknown-position", lambda d: d["model"].update(attention={"name": "se", "position": "middle"}),
              "model.attention.position: 'middle' is not allowed"),
    # checks made when the data or the model is built (still before the store is touched)
    bad_trial("trial-cifar10-missing-root", lambda d: d.update(data={"name": "cifar10", "root": "no-cifar-here"}),
              "data.root", "no-cifar-here"),
    bad_trial("trial-imagefolder-without-root", lambda d: d.update(data={"name": "imagefolder"}),
              "data.root: required for imagefolder"),
    # command-line overrides of a trial
    bad_trial("trial-override-without-equals", None, "command line", "override 'train.lr' is not of the form",
              args=["train.lr"], named=False),
    bad_trial("trial-override-into-a-value", lambda d: d["train"].update(lr=0.1),
              "command line", "train.lr.x: 'lr' is not a section", args=["train.lr.x=1"], named=False),
    bad_trial("trial-override-wrong-type", None, "train.epochs: Input should be a valid integer",
              args=["train.epochs=ten"]),
    case("trial-missing-file", ["train", "nosuch-trial.yaml"], ["nosuch-trial.yaml", "no such file"], where="empty"),
    bad_trial("trial-accelerator-gpu", lambda d: d["train"].update(accelerator="gpu"), "train:", "accelerator"),
    bad_trial("trial-checkpoint-not-weights",
              lambda d: d["model"].update(checkpoint="trial-checkpoint-not-weights.yaml"),
              "model.checkpoint: trial-checkpoint-not-weights.yaml is not a weights file"),
    bad_trial("trial-tracking-server-refused", None, "tracking.uri: no tracking server answers at http://127.0.0.1:1",
              args=["tracking.uri=http://127.0.0.1:1"]),

    # ------------------------------------------------------------ command-line arguments
    case("cli-unknown-command", ["trian", "x.yaml"], ["No such command 'trian'"]),
    case("cli-unknown-option", ["run", "x.yaml", "--job", "2"], ["No such option: --job"]),
    case("run-jobs-zero", ["run", "cli-jobs.yaml", "--jobs", "0"], ["--jobs"], ok_study("cli-jobs"), where="empty"),
    case("run-trials-negative", ["run", "cli-trials.yaml", "--trials", "-1"],
         ["cli-trials.yaml", "study.trials:", "greater than or equal to 1"], ok_study("cli-trials")),
    # --trials 0 must be refused like -1, not dropped (which would run the whole study)
    case("run-trials-zero", ["run", "cli-trials0.yaml", "--trials", "0"], ["trials"], ok_study("cli-trials0")),
    # ------------------------------------------------------------ launchers (ablate run --launcher)
    case("run-workers-without-launcher", ["run", "cli-workers.yaml", "--workers", "2"],
         ["--workers: only with --launcher slurm|local"], ok_study("cli-workers"), where="empty"),
    case("run-launcher-unknown", ["run", "cli-pbs.yaml", "--launcher", "pbs"],
         ["--launcher: 'pbs' is not a launcher (allowed: local, slurm)"], ok_study("cli-pbs"), where="empty"),
    case("run-launcher-with-jobs", ["run", "cli-lj.yaml", "--launcher", "local", "--jobs", "2"],
         ["--jobs: not with --launcher"], ok_study("cli-lj"), where="empty"),
    case("run-launcher-slurm-on-a-journal", ["run", "cli-sj.yaml", "--launcher", "slurm"],
         ["--launcher slurm:", "--storage postgresql://"], ok_study("cli-sj")),
    bad_study("study-launcher-bad-time", lambda d: d.update(launcher={"time": "two hours"}), "launcher.time"),
    bad_study("study-launcher-sbatch-not-an-option", lambda d: d.update(launcher={"sbatch": ["qos=high"]}),
              "launcher.sbatch", "--key=value"),
    bad_study("study-launcher-bad-mem", lambda d: d.update(launcher={"mem": "lots"}), "launcher.mem",
              "'lots' is not a memory size sbatch takes"),
    bad_study("study-launcher-unknown-key", lambda d: d.update(launcher={"gpus": 2}), "launcher.gpus"),
    bad_study("study-launcher-zero-workers", lambda d: d.update(launcher={"workers": 0}), "launcher.workers"),
    case("run-storage-unreachable-postgres", ["run", "cli-pg.yaml", "--storage", PG_URL],
         ["--storage: cannot open postgresql://u:***@127.0.0.1:1/db"], ok_study("cli-pg"), where="empty",
         forbid=[PASSWORD]),
    case("run-storage-sqlite-parallel", ["run", "cli-sqlite2.yaml", "--storage", "sqlite:///x.db", "--jobs", "2"],
         ["--storage: SQLite does not take parallel workers"], ok_study("cli-sqlite2"), where="empty"),
    case("run-storage-journal-is-a-directory", ["run", "cli-journal.yaml", "--storage", "journal-dir"],
         ["--storage", "journal-dir"], {**ok_study("cli-journal"), "journal-dir": DIR}),
    case("run-tracking-uri-unopenable", ["run", "cli-uri.yaml", "--tracking-uri", "sqlite:///cli-uri.yaml/m.db"],
         ["tracking", "sqlite:///cli-uri.yaml/m.db"], ok_study("cli-uri")),
    case("run-plugin-missing", ["run", "cli-plugin.yaml", "--plugin", "no_such_plugin_mod"],
         ["--plugin: cannot import 'no_such_plugin_mod'", "ModuleNotFoundError"], ok_study("cli-plugin")),
    case("inspect-unknown-backbone", ["inspect", "resnt50"], ["model.backbone: unknown timm backbone 'resnt50'"]),
    # ablate plan: a paper's ablations as a study file; nothing written on bad input
    case("plan-unknown-module", ["plan", "sx", "--out", "sx.yaml"], ["module: unknown attention module 'sx'", "se"],
         forbid=["sx.yaml"]),
    case("plan-unknown-backbone", ["plan", "se", "--backbone", "resnt50", "--out", "se.yaml"],
         ["--backbone: unknown timm backbone 'resnt50'", "resnet50"]),
    case("plan-module-without-ablations", ["plan", "attn_pool"], ["module: module 'attn_pool' has no knobs"]),
    case("inspect-unknown-attention", [*INSPECT, "--attention", "cbma"], ["unknown attention module 'cbma'"]),
    case("inspect-unknown-position", [*INSPECT, "--attention", "se", "--position", "middle"],
         ["attention.position: 'middle' is not allowed"]),
    case("inspect-gate-at-conv", [*INSPECT, "--attention", "se", "--position", "conv"],
         ["model.attention.position: 'se' is a gate module", "not 'conv'"]),
    case("inspect-stage-does-not-exist", [*INSPECT, "--attention", "se", "--stages", "9"],
         ["stages: stage 9 does not exist (this backbone has stages 1-4)"]),
    case("inspect-stages-not-numbers", [*INSPECT, "--attention", "se", "--stages", "x"],
         ["--stages: 'x' is not a comma-separated list"]),
    case("inspect-unknown-knob", [*INSPECT, "--attention", "se", "--knob", "kernel_size=3"],
         ["module 'se' takes no knob 'kernel_size'"]),
    case("inspect-knob-without-equals", [*INSPECT, "--attention", "se", "--knob", "reduction"],
         ["--knob: override 'reduction' is not of the form"]),
    case("inspect-every-zero", [*INSPECT, "--attention", "se", "--every", "0"],
         ["attention.every: Input should be greater than or equal to 1"]),
    case("inspect-image-size-not-int", ["inspect", "resnet10_narrow", "--image-size", "big"],
         ["'--image-size'"]),
    # stores that are not what they are called
    case("run-storage-is-the-mlflow-db", ["run", "cli-sdb.yaml", "--storage", "mlruns/mlflow.db"],
         ["--storage: mlruns/mlflow.db is not an Optuna journal"], ok_study("cli-sdb")),
    case("run-storage-yaml-as-journal", ["run", "cli-syaml.yaml", "--storage", "cli-syaml.yaml"],
         ["--storage: cli-syaml.yaml is not an Optuna journal"], ok_study("cli-syaml")),
    case("run-storage-sqlite-mlflow-db", ["run", "cli-ssql.yaml", "--storage", "sqlite:///mlruns/mlflow.db"],
         ["--storage: mlruns/mlflow.db is the MLflow tracking database, not an Optuna storage"], ok_study("cli-ssql")),
    case("run-storage-sqlite-not-a-db", ["run", "cli-snot.yaml", "--storage", "sqlite:///cli-snot.yaml"],
         ["--storage: cli-snot.yaml is not an SQLite database"], ok_study("cli-snot")),
    case("report-storage-is-the-mlflow-db", ["report", "tiny", "--storage", "mlruns/mlflow.db"],
         ["--storage: mlruns/mlflow.db is not an Optuna journal"]),
    case("run-tracking-server-refused", ["run", "cli-http.yaml", "--tracking-uri", "http://127.0.0.1:1"],
         ["tracking.uri: no tracking server answers at http://127.0.0.1:1", "ConnectionRefusedError"],
         ok_study("cli-http")),
    case("run-tracking-uri-not-a-db", ["run", "cli-tnot.yaml", "--tracking-uri", "sqlite:///mlruns/optuna.journal"],
         ["tracking.uri:", "mlruns/optuna.journal is not an SQLite database"], ok_study("cli-tnot")),
    case("report-log-tracking-server-refused", ["report", "tiny", "--log", "--tracking-uri", "http://127.0.0.1:1"],
         ["tracking.uri: no tracking server answers at http://127.0.0.1:1"]),
    # report outputs
    case("report-out-is-a-folder", ["report", "tiny", "--out", "mlruns"], ["--out: mlruns is a folder; give a file"]),
    case("report-plots-is-a-file", ["report", "tiny", "--plots", "a-file.txt"],
         ["--plots: a-file.txt is a file; give a folder"], {"a-file.txt": "x"}),
    case("report-out-full-disk", ["report", "tiny", "--out", "/dev/full"],
         ["--out: cannot write /dev/full (OSError: No space left on device)"]),
    case("report-out-name-too-long", ["report", "tiny", "--out", "r" * 300 + ".md"],
         ["--out: cannot write", "File name too long"]),
    case("report-dry-run-out-full-disk",
         ["report", "{repo}/studies/se_reduction.yaml", "--dry-run", "--out", "/dev/full"],
         ["--out: cannot write /dev/full"]),
    case("gradcam-out-full-disk", ["gradcam", "tiny", "--images", "2", "--out", "/dev/full"],
         ["--out: cannot write /dev/full (OSError: No space left on device)"]),
    case("gradcam-out-is-a-folder", ["gradcam", "tiny", "--out", "mlruns"], ["--out: mlruns is a folder"]),
    # other commands
    case("inspect-image-size-zero", ["inspect", "resnet10_narrow", "--image-size", "0"],
         ["'--image-size'", "greater than or equal to 8"]),
    case("inspect-image-size-negative", ["inspect", "resnet10_narrow", "--image-size", "-5"], ["'--image-size'"]),
    case("inspect-in-chans-zero", [*INSPECT, "--in-chans", "0"], ["'--in-chans'", "greater than or equal to 1"]),
    case("inspect-num-classes-negative", [*INSPECT, "--num-classes", "-3"],
         ["'--num-classes'", "greater than or equal to 0"]),
    case("inspect-knob-twice", [*INSPECT, "--attention", "se", "--knob", "reduction=4", "--knob", "reduction=8"],
         ["--knob: reduction is given twice ('4' and '8')"]),
    case("inspect-knob-inf", [*INSPECT, "--attention", "se", "--knob", "reduction=.inf"],
         ["model.attention.knobs.reduction: se.reduction=inf is not allowed"]),
    case("inspect-vit-image-too-small", ["inspect", "vit_tiny_patch16_224", "--image-size", "32"],
         ["--image-size, --in-chans: vit_tiny_patch16_224 cannot run on 3 x 32 x 32 inputs", "224"]),
    case("ui-port-out-of-range", ["ui", "--port", "70000"], ["'--port'", "less than or equal to 65535"]),
    case("ui-host-not-here", ["ui", "--host", "10.255.255.1", "--port", "5999"],
         ["--host 10.255.255.1 --port 5999: cannot serve there"]),
    case("server-host-not-here", ["server", "--backend-store-uri", "sqlite:///x.db", "--artifacts", "arts",
                                  "--host", "10.255.255.1"], ["--host 10.255.255.1 --port 5000: cannot serve there"]),
    case("run-plugin-system-exit", ["run", "cli-exit.yaml", "--plugin", "exits_plugin"],
         ["--plugin: cannot import 'exits_plugin': SystemExit: 3"],
         {**ok_study("cli-exit"), "exits_plugin.py": "import sys\nsys.exit(3)\n"}),
    case("modules-plugin-raises", ["modules", "--plugin", "raises_plugin"],
         ["--plugin: cannot import 'raises_plugin': ValueError: no"], {"raises_plugin.py": "raise ValueError('no')\n"}),
    case("run-local-workers-too-many", ["run", "cli-w1000.yaml", "--launcher", "local", "--workers", "1000"],
         ["--workers (launcher.workers): 1000 local tasks on"], ok_study("cli-w1000"), where="empty"),
    case("inspect-vit-at-block", ["inspect", "vit_tiny_patch16_224", "--attention", "se", "--image-size", "224"],
         ["model.attention.position: VisionTransformer blocks have neither an attention slot nor a residual branch "
          "for position 'block'"]),
    case("run-jobs-too-many", ["run", "cli-jobs1000.yaml", "--jobs", "1000"], ["--jobs: 1000 workers on", "CPU cores"],
         ok_study("cli-jobs1000"), where="empty"),
    # environment variables
    case("env-plugins-missing", ["modules"], ["$ABLATE_PLUGINS: cannot import 'no_such_env_plugin'"],
         env={"ABLATE_PLUGINS": "no_such_env_plugin"}),
    case("env-tracking-uri-refused", ["report", "tiny", "--log"],
         ["tracking.uri: no tracking server answers at http://127.0.0.1:1"],
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}),
    case("report-unknown-study", ["report", "nosuch"], ["unknown study 'nosuch' in mlruns/optuna.journal"]),
    case("report-unknown-study-no-stores", ["report", "nosuch"], ["unknown study 'nosuch'", "mlruns/optuna.journal"],
         where="empty"),
    case("report-bad-format", ["report", "tiny", "--format", "pdf"], ["--format: 'pdf' is not one of"]),
    case("report-unknown-columns", ["report", "tiny", "--columns", "wide"],
         ["--columns: 'wide' is not one of compact, all"]),
    case("ui-unknown-study", ["ui", "nosuch", "--port", "5999"], ["study: no study 'nosuch' in", "studies: tiny"]),
    case("report-unknown-by-key", ["report", "tiny", "--by", "model.depth"],
         ["--by: unknown key 'model.depth' (the study varies: model.attention.name)"]),
    case("report-missing-journal", ["report", "tiny", "--storage", "nosuch.journal"],
         ["unknown study 'tiny': no Optuna journal at nosuch.journal"]),
    case("report-bad-study-file", ["report", "report-bad.yaml"], ["report-bad.yaml", "study.sampler: 'anneal'"],
         {"report-bad.yaml": study_doc("report-bad", lambda d: d["study"].update(sampler="anneal"))}),
    case("gradcam-images-zero", ["gradcam", "tiny", "--images", "0"], ["'--images'"]),
    case("ui-port-not-int", ["ui", "--port", "abc"], ["'--port'"]),

    # ------------------------------------------------------------ round three: paths the system refuses (for root
    # too: chmod stops no root), stores that cannot be created, a study's seeds
    case("study-file-name-too-long", ["run", "s" * 300 + ".yaml"],
         ["(305 characters): File name too long (at most 255 bytes a name, 4096 a path)"], where="empty"),
    case("study-path-too-long", ["run", "/".join(["abcdefghij"] * 500) + ".yaml"],
         ["abcdefghij/abcdefghij", "(5504 characters): File name too long"], where="empty"),
    case("study-path-through-a-file", ["run", "thr-file.yaml/x.yaml"],
         ["thr-file.yaml/x.yaml: no such file (thr-file.yaml is a file, not a folder)"], {"thr-file.yaml": "x: 1\n"}),
    case("study-symlink-loop", ["run", "loop-a.yaml"], ["loop-a.yaml: Too many levels of symbolic links"],
         {"loop-a.yaml": Link("loop-b.yaml"), "loop-b.yaml": Link("loop-a.yaml")}),
    case("study-fifo", ["run", "fifo-study.yaml"],
         ["fifo-study.yaml: not a regular file (a FIFO, a device or a socket); give a YAML file"],
         {"fifo-study.yaml": FIFO}),
    case("study-is-a-folder-named", ["run", "mlruns"], ["mlruns: a folder; give a YAML file"]),
    bad_study("include-name-too-long", lambda d: d.update(include=["i" * 300 + ".yaml"]),
              "include:", "File name too long"),
    bad_study("base-checkpoint-name-too-long", lambda d: d["base"]["model"].update(checkpoint="w" * 300 + ".pt"),
              "model.checkpoint:", "File name too long"),
    bad_study("base-cifar10-root-through-a-file",
              lambda d: d["base"]["data"].update(name="cifar10", root="thr-file.yaml/cifar"),
              "data.root", "not found under thr-file.yaml/cifar", files={"thr-file.yaml": "x: 1\n"}),
    bad_study("base-cifar10-root-name-too-long", lambda d: d["base"]["data"].update(name="cifar10", root="c" * 300),
              "data.root:", "File name too long"),
    case("trial-fifo", ["train", "fifo-trial.yaml"], ["fifo-trial.yaml: not a regular file"],
         {"fifo-trial.yaml": FIFO}),
    case("trial-file-name-too-long", ["train", "t" * 300 + ".yaml"], ["File name too long"], where="empty"),
    case("report-study-name-too-long", ["report", "n" * 300], ["unknown study 'nnnn"]),
    case("report-study-file-name-too-long", ["report", "n" * 300 + ".yaml"], ["File name too long"]),
    case("report-out-through-a-file", ["report", "tiny", "--out", "a-file.txt/r.md"],
         ["--out: cannot write a-file.txt/r.md: a-file.txt is a file, not a folder"], {"a-file.txt": "x"}),
    case("report-plots-through-a-file", ["report", "tiny", "--plots", "a-file.txt/plots"],
         ["--plots: cannot write a-file.txt/plots: a-file.txt is a file, not a folder"], {"a-file.txt": "x"}),
    case("report-out-symlink-loop", ["report", "tiny", "--out", "loop-a.yaml"],
         ["--out: cannot write loop-a.yaml: Too many levels of symbolic links"],
         {"loop-a.yaml": Link("loop-b.yaml"), "loop-b.yaml": Link("loop-a.yaml")}),
    case("report-storage-fifo", ["report", "tiny", "--storage", "fifo-journal"],
         ["--storage: fifo-journal is not a regular file (a FIFO, a device or a socket)"], {"fifo-journal": FIFO}),
    case("run-storage-name-too-long", ["run", "cli-slong.yaml", "--storage", "j" * 300],
         ["--storage: jjjj", "File name too long"], ok_study("cli-slong"), where="empty"),
    case("run-tracking-uri-under-proc", ["run", "cli-proc.yaml", "--tracking-uri", "sqlite:////proc/ablate/m.db"],
         ["tracking.uri: cannot create /proc/ablate/m.db"], ok_study("cli-proc"), where="empty"),
    case("run-tracking-uri-through-a-file", ["run", "cli-thr.yaml", "--tracking-uri", "sqlite:///a-file.txt/new/m.db"],
         ["tracking.uri: cannot create a-file.txt/new/m.db", "Not a directory"],
         {**ok_study("cli-thr"), "a-file.txt": "x"}),
    case("run-tracking-uri-name-too-long", ["run", "cli-tlong.yaml", "--tracking-uri",
                                            f"sqlite:///new/deeper/{'m' * 300}.db"],
         ["tracking.uri: cannot create new/deeper/mmm", "File name too long"], ok_study("cli-tlong"), where="empty"),
    case("run-tracking-uri-is-a-folder", ["run", "cli-tdir.yaml", "--tracking-uri", "sqlite:///mlruns"],
         ["tracking.uri: mlruns is a folder; give the SQLite file's path"], ok_study("cli-tdir")),
    case("run-tracking-uri-file-store", ["run", "cli-tfile.yaml", "--tracking-uri", "file:./old-mlruns"],
         ["tracking.uri: file:./old-mlruns is MLflow's file store, which MLflow 3 retired"], ok_study("cli-tfile"),
         where="empty"),
    case("run-tracking-uri-plain-folder", ["run", "cli-tplain.yaml", "--tracking-uri", "old-mlruns"],
         ["tracking.uri: old-mlruns is MLflow's file store"], ok_study("cli-tplain"), where="empty"),
    case("run-tracking-postgres-refused", ["run", "cli-tpg.yaml", "--tracking-uri", PG_URL],
         ["tracking.uri: no database server answers at postgresql://u:***@127.0.0.1:1/db"], ok_study("cli-tpg"),
         where="empty", forbid=[PASSWORD]),
    bad_trial("trial-tracking-uri-under-proc", None, "tracking.uri: cannot create /proc/ablate/m.db",
              args=["tracking.uri=sqlite:////proc/ablate/m.db"], named=False),
    case("report-log-tracking-uri-under-proc", ["report", "tiny", "--log", "--tracking-uri",
                                                "sqlite:////proc/ablate/m.db"],
         ["tracking.uri: cannot create /proc/ablate/m.db"]),
    bad_study("study-seed-negative", lambda d: d["study"].update(seeds=[0, -1]),
              "study.seeds.1: Input should be greater than or equal to 0 (got -1)", forbid=["train.seed"]),
    case("env-tracking-uri-under-proc", ["run", "cli-eproc.yaml"], ["tracking.uri: cannot create /proc/ablate/m.db"],
         ok_study("cli-eproc"), where="empty", env={"MLFLOW_TRACKING_URI": "sqlite:////proc/ablate/m.db"}),
    bad_study("study-seed-too-big", lambda d: d["study"].update(seeds=[2**32]),
              "study.seeds.0: Input should be less than or equal to 4294967295"),
]


@pytest.mark.parametrize("args, expect, files, where, forbid, env", CASES)
# complexity over 10 on purpose: one catalogue case, every way it may fail
def test_bad_input_is_one_line_exit_2_and_touches_no_store(request, tmp_path, run_cli, monkeypatch,  # noqa: C901
                                                           args, expect, files, where, forbid, env):
    folder = request.getfixturevalue("stores") if where == "stores" else tmp_path
    for name, content in files.items():
        path = folder / name
        if content is DIR:
            path.mkdir(exist_ok=True)
        elif content is FIFO:
            if not path.exists():
                os.mkfifo(path)
        elif isinstance(content, Link):
            if not path.is_symlink():
                path.symlink_to(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    before, others = snapshot(folder), outside_stores(folder)
    if where == "stores":
        assert before, "the stores fixture lost its stores"

    args = [a.replace("{repo}", str(REPO)) for a in args]
    if request.node.callspec.id in REAL_PROCESS:
        proc = ablate_cli(*args, cwd=folder, env=env)
    else:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        proc = run_cli(*args, cwd=folder)

    # every broken promise at once, so one run shows all that is wrong with a case
    output = proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    line = next((ln for ln in lines if ln.startswith("ablate: error: ")), "")
    problems = []
    if "Traceback" in output:
        problems.append("a traceback was printed")
    if proc.returncode != 2:
        problems.append(f"exit code {proc.returncode}, not 2")
    if len(lines) != 1 or not line:
        problems.append(f"stderr has {len(lines)} lines, not one 'ablate: error: ...' line")
    problems += [f"{text!r} not in the error line {line!r}" for text in expect if text not in line]
    problems += [f"{text!r} was printed" for text in forbid if text in output]
    if proc.stdout.strip():
        problems.append("something was printed on stdout")
    after = snapshot(folder)
    touched = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if touched:
        problems.append(f"the stores were touched: {', '.join(touched[:5])}{' ...' if len(touched) > 5 else ''}")
    appeared = sorted(outside_stores(folder) - others)
    if appeared:
        problems.append(f"files appeared: {', '.join(appeared)}")
    report = "\n".join(problems) + f"\n--- stderr:\n{proc.stderr[-2500:]}\n--- stdout:\n{proc.stdout[-800:]}"
    assert not problems, report
    if where == "empty":
        assert not (folder / "mlruns").exists()


def test_every_kind_of_input_has_a_real_process_case():
    assert REAL_PROCESS <= {p.id for p in CASES}, REAL_PROCESS - {p.id for p in CASES}


def test_report_outputs_create_their_missing_folders(stores, run_cli):
    """--out and --plots into folders that do not exist yet: created, not a traceback."""
    proc = run_cli("report", "tiny", "--out", "new/deeper/tiny.md", "--plots", "new/plots", cwd=stores)
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "attention=se" in (stores / "new" / "deeper" / "tiny.md").read_text()
        plots = list((stores / "new" / "plots").glob("*.png"))
        assert plots and all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    finally:
        shutil.rmtree(stores / "new", ignore_errors=True)


def test_a_read_only_tracking_store_is_one_line_not_minutes_of_retries(stores, tmp_path, run_cli):
    """MLflow retries a write to a read-only SQLite file for minutes; the store is probed first (a plain report
    only reads, and reads a read-only store)."""
    ro = tmp_path / "ro" / "mlflow.db"
    ro.parent.mkdir()
    shutil.copy(stores / "mlruns" / "mlflow.db", ro)
    ro.chmod(0o444)
    if os.access(ro, os.W_OK):  # root ignores the mode, not an immutable file
        subprocess.run(["chattr", "+i", str(ro)], capture_output=True)
    if os.access(ro, os.W_OK):
        pytest.skip("root without chattr here: no file can be made read-only")
    try:
        read = run_cli("report", "tiny", "--tracking-uri", f"sqlite:///{ro}", cwd=stores)
        proc = run_cli("report", "tiny", "--log", "--tracking-uri", f"sqlite:///{ro}", cwd=stores)
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
    assert read.returncode == 0 and "attention=se" in read.stdout, read.stderr[-2000:]  # a report only reads
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"ablate: error: tracking.uri: {ro} is read-only (runs, their metrics and reports " \
                                  "are written there); make it writable or copy it"


def test_ctrl_c_while_the_study_file_loads_is_one_line_exit_130(tmp_path, run_cli, monkeypatch):
    """Ctrl-C before the study is set up: typer turns it into exit 130 without a word; ablate says it in one line."""
    import ablate.spec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate.spec, "load_study", interrupted)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study_doc("s")))
    proc = run_cli("run", "s.yaml", cwd=tmp_path)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (130, "ablate: interrupted", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
