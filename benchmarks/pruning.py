"""Cheaper search: pruned TPE (ASHA, four validations per epoch) against the full grid of the shipped attention space.

Both studies train the same networks on the same data with the same seeds, in one run, side by side. The grid is
search_spaces/attention.yaml (none, SE r in 4..32, ECA k in 3..7, CBAM r x k: 20 cells) x 2 seeds; the search
samples the same space with TPE, pruner asha and train.val_every 0.25, for half the grid's trials (one seed per
sampled configuration). The search is its selection stage alone (confirm: top 0): its pick is judged by the
grid's own seeds here, and a study's confirmation stage (top 3 and the baseline on 3 fresh seeds) costs the same
12 trials after any search. Printed:
epochs each spent (a pruned trial counts the validations it reached) and whether the search's best configuration,
by mean over its seeds, is the grid's best within the grid's 95% interval.

    python benchmarks/pruning.py            # ~15 min on 2 CPU cores
    python benchmarks/pruning.py --quick    # 2 epochs, fewer images, a smoke run
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from ablate import stats
from ablate.spec import load_study, run_label
from ablate.storage import Attr
from ablate.study import run_study, validations_per_epoch

REPO = Path(__file__).resolve().parents[1]


def study_file(folder: Path, name: str, args, **study) -> Path:
    base = {"model": {"backbone": "resnet10_narrow", "attention": {"position": "block"}},
            "data": {"name": "cluttered-digits", "image_size": 32, "batch_size": 32,
                     "train_size": args.train_size, "val_size": args.val_size},
            "train": {"epochs": args.epochs, "lr": 0.05, "progress_bar": False, "checkpoint_every": 0},
            "tracking": {"log_weights": False}}
    doc = {"study": {"name": name, "metric": "val/acc1", "seeds": [0, 1], **study}, "base": base,
           "include": [str(REPO / "search_spaces" / "attention.yaml")]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def epochs_spent(study: optuna.Study, epochs: int, per_epoch: int) -> float:
    """Epochs trained: a finished trial all of them, a pruned one the validations it reached."""
    spent = 0.0
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        reached = (max(t.intermediate_values) + 1) / per_epoch if t.intermediate_values else epochs
        spent += epochs if t.state == TrialState.COMPLETE else reached
    return spent


def by_configuration(study: optuna.Study) -> dict[str, pd.Series]:
    """Each configuration's final val/acc1 (%) by seed, from its finished trials."""
    out: dict[str, dict] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        out.setdefault(run_label(t.user_attrs[Attr.PARAMS]), {})[t.user_attrs[Attr.SEED]] = 100 * t.value
    return {k: pd.Series(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs on fewer images: a smoke run")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--val-size", type=int, default=500)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.val_size = 2, 256, 128
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="ablate-pruning-"))
    os.chdir(folder)  # both studies' stores: mlruns/ here
    grid_spec = load_study(study_file(folder, "grid", args, sampler="grid"))
    cells = 20  # none, SE r=4..32, ECA k=3..7, CBAM r x k: the grid's trials are 2 x 20
    rows, found = [], {}
    search_file = study_file(folder, "search", args, sampler="tpe", pruner="asha", trials=cells, confirm={"top": 0})
    for name, spec in (("grid", grid_spec), ("tpe + asha", load_study(search_file, ["train.val_every=0.25"]))):
        start = time.perf_counter()
        study = run_study(spec)
        per_epoch = validations_per_epoch(0.25) if name != "grid" else 1
        found[name] = by_configuration(study)
        states = [t.state for t in study.trials]
        rows.append({"study": name, "trials": len(states), "pruned": states.count(TrialState.PRUNED),
                     "epochs": epochs_spent(study, args.epochs, per_epoch), "wall (s)": time.perf_counter() - start})
    grid, search = found["grid"], found["tpe + asha"]
    means = {k: v.mean() for k, v in grid.items()}
    best = max(means, key=means.get)
    # the search's pick: its best configuration by mean over the seeds it finished
    pick = max(search, key=lambda k: search[k].mean())
    _, low, high = stats.delta_ci(grid[best], grid[pick])
    table = pd.DataFrame(rows).set_index("study")
    table["epochs / grid's"] = table["epochs"] / table.loc["grid", "epochs"]
    print(table.to_string(float_format="{:.2f}".format))
    print(f"\ngrid's best: {best} ({means[best]:.2f}%); the search's pick: {pick} (grid mean {means[pick]:.2f}%, "
          f"Δ {means[pick] - means[best]:+.2f} [{low:+.2f}, {high:+.2f}] against the grid's best)")
    within = pick == best or stats.direction(low, high) == stats.UNDECIDED
    share = table.loc["tpe + asha", "epochs / grid's"]
    print(f"found the best cell within its 95% interval: {'yes' if within else 'no'}; "
          f"epochs: {share:.2f} of the grid's (goal: at most 0.33)")


if __name__ == "__main__":
    main()
