"""What the study-level tests share: a tiny study, the CLI in a subprocess, and readers of both stores."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import yaml
from optuna.trial import TrialState

# resnet10_narrow on 16 px synthetic images: a trial is a fraction of a second once the process is up
TINY_BASE = {
    "model": {"backbone": "resnet10_narrow"},
    "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 32, "val_size": 16},
    "train": {"epochs": 1, "progress_bar": False},
}


def write_study(path: Path, **sections) -> Path:
    """A grid of none / se x seeds 0, 1; a given section replaces the default one."""
    doc = {"study": {"name": "tiny", "seeds": [0, 1]}, "base": TINY_BASE,
           "space": {"model.attention.name": ["none", "se"]}}
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc))
    return path


def cli_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}  # one thread per process: 2 shared cores
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def ablate(*args, cwd=None, timeout=900, **env):
    """`ablate ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env), cwd=cwd)


def start(*args, cwd=None, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablate.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(**env), cwd=cwd)


def load(name="tiny", folder: Path | None = None):
    from ablate.storage import JOURNAL, make_storage

    return optuna.load_study(study_name=name, storage=make_storage(str((folder or Path.cwd()) / JOURNAL), 1))


def runs(name="tiny", folder: Path | None = None):
    client = mlflow.MlflowClient(f"sqlite:///{(folder or Path.cwd()) / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def cells_done(study):
    """(label, seed) of every COMPLETE trial, sorted: each grid cell x seed exactly once means no dup, no gap."""
    return sorted((t.user_attrs["label"], t.user_attrs["seed"]) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def cells(modules=("none", "se"), seeds=(0, 1)) -> list[tuple[str, int]]:
    """What cells_done says of a finished grid over `modules` x `seeds`."""
    return sorted((f"attention={m}", s) for m in modules for s in seeds)
