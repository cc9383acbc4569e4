"""What the tests share as plain functions: a tiny study, the `ablate` command (in a fresh interpreter, or its
entry point in this process), and readers of both stores.

The pytest fixtures are in conftest.py; `run_cli` there is the in-process runner with its output captured.
These are plain functions so that module-scoped fixtures and module-level helpers can call them too;
tests/ has no __init__.py, so `from helpers import ...` finds this file (pytest puts tests/ on sys.path).
"""
import os
import subprocess
import sys
import traceback
from pathlib import Path

import mlflow
import numpy as np
import optuna
import torch
import yaml
from optuna.trial import TrialState

from ablate import tracking, train
from ablate.cli import main
from ablate.storage import JOURNAL, make_storage

# resnet10_narrow on 16 px synthetic images: a trial is a fraction of a second once the process is up
TINY_BASE = {
    "model": {"backbone": "resnet10_narrow"},
    "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 32, "val_size": 16},
    "train": {"epochs": 1, "progress_bar": False},
    # no weights: a LoggedModel costs 0.25 s a trial and MLflow's scan of the packages 2 s a process (the tests of
    # weights, model.pt and logged models ask for them)
    "tracking": {"log_weights": False},
}


def write_study(path: Path, **sections) -> Path:
    """A grid of none / se x seeds 0, 1; a given section replaces the default one. Its steps are not priced
    (tests/test_step_cost.py prices them): pricing costs a few seconds a study, and CI runs hundreds."""
    doc = {"study": {"name": "tiny", "seeds": [0, 1], "price_steps": False}, "base": TINY_BASE,
           "space": {"model.attention.name": ["none", "se"]}}
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------- the `ablate` command

def cli_env(**extra) -> dict:
    """The environment of an `ablate` process: this one's, one thread (2 shared cores), the default MLflow store."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _command(args) -> list[str]:
    return [sys.executable, "-m", "ablate.cli", *map(str, args)]


def ablate(*args, cwd=None, timeout=900, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    """`ablate ARGS` in a fresh interpreter, as a user runs it, to the end: exit code, stdout and stderr.
    env: variables to add; options: more subprocess.run arguments (preexec_fn)."""
    return subprocess.run(_command(args), capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**(env or {})), cwd=cwd, **options)


def start(*args, cwd=None, env: dict | None = None, **options) -> subprocess.Popen:
    """`ablate ARGS` started in a fresh interpreter and left running; stdout and stderr are pipes unless
    options say otherwise (a file for a long run nobody reads meanwhile: a full pipe would stall it)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **options}
    return subprocess.Popen(_command(args), text=True, env=cli_env(**(env or {})), cwd=cwd, **options)


def call_main(*args, cwd=None) -> tuple[int, str]:
    """`ablate ARGS` through ablate.cli.main in this process (what `python -m ablate.cli` runs, without
    its start-up): (exit code, the traceback a user would see if an exception escaped, else "").
    Output is not captured here: the run_cli fixture (conftest.py) does that. What a run changes in this
    process and a later test would inherit is restored afterwards: sys.path (which --plugin extends), the working
    directory, Optuna's log level (a study quiets it) and torch's deterministic mode (a trial's Trainer sets it)."""
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    saved_verbosity = optuna.logging.get_verbosity()
    saved_deterministic = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    code, trace = 0, ""  # main returning, were it to, is a process exiting 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        main([str(a) for a in args])
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            code, trace = 1, f"{e.code}\n"
    except BaseException:  # noqa: BLE001 (what a user would see as a traceback is exactly what tests look for)
        code, trace = 1, traceback.format_exc()
    finally:
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
        optuna.logging.set_verbosity(saved_verbosity)
        torch.use_deterministic_algorithms(saved_deterministic[0], warn_only=saved_deterministic[1])
    return code, trace


# ---------------------------------------------------------------- the stores

def load(name="tiny", storage: str | Path | None = None) -> optuna.Study:
    """Optuna study `name` from `storage`: a journal file (default: ./mlruns/optuna.journal), opened as
    `ablate` opens it, or a database URL, read with Optuna's plain RDBStorage (no heartbeats)."""
    storage = str(storage or Path.cwd() / JOURNAL)
    return optuna.load_study(study_name=name, storage=storage if "://" in storage else make_storage(storage, 1))


def runs(name="tiny", folder: Path | None = None, configurations: bool = False):
    """The study's parent and trial runs; with `configurations`, its configuration runs (one per cell) too."""
    client = mlflow.MlflowClient(f"sqlite:///{(folder or Path.cwd()) / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in found if configurations or r.data.tags.get("ablate.role") != "configuration"]


def study_run_of(run, every) -> str:
    """The study (parent) run a trial run belongs to: its configuration run's parent."""
    by_id = {r.info.run_id: r for r in every}
    configuration = by_id[run.data.tags["mlflow.parentRunId"]]
    assert configuration.data.tags["ablate.role"] == "configuration"
    return configuration.data.tags["mlflow.parentRunId"]


def cells_done(study):
    """(label, seed) of every COMPLETE trial, sorted: each grid cell x seed exactly once means no dup, no gap."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return sorted((t.user_attrs["label"], t.user_attrs["seed"]) for t in done)


def cells(modules=("none", "se"), seeds=(0, 1)) -> list[tuple[str, int]]:
    """What cells_done says of a finished grid over `modules` x `seeds`."""
    return sorted((f"attention={m}", s) for m in modules for s in seeds)


# ---------------------------------------------------------------- a trainer whose effects are known

TRUE_ACC1 = {"none": 0.60, "se": 0.60, "cbam": 0.90, "eca": 0.62}  # se: no effect at all; cbam: a large one


class Toy:
    """train.run_trial's stand-in: val/acc1 = the module's true accuracy + N(0, 0.01) noise fixed by (module, seed)."""

    def __init__(self):
        self.trained = []  # (module, seed) of every trial that got as far as training

    def __call__(self, cfg, *, parent_run_id=None, tags=None, run_name=None, **_):
        module, seed = cfg.model.attention.name, cfg.train.seed
        self.trained.append((module, seed))
        noise = np.random.default_rng([sorted(TRUE_ACC1).index(module), seed]).normal(0, 0.01)
        value = TRUE_ACC1[module] + noise
        client = tracking.make_client(cfg.tracking.uri)
        experiment_id = tracking.get_or_create_experiment(client, cfg.tracking.experiment)
        with tracking.tracked_run(client, experiment_id, run_name=run_name, parent_run_id=parent_run_id,
                                  tags=tags) as run_id:
            tracking.log_metrics(client, run_id, {"val/acc1": value, "model/params": 1e6, "model/gmacs": 0.01}, 0)
        return train.TrialResult(run_id, {"val/acc1": value, "model/params": 1e6, "model/gmacs": 0.01}, value)
