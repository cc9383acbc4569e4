"""Study throughput: `--jobs 1` vs `--jobs 2` on a grid, and what pruning saves on attention_search.yaml.

Run by hand from the repository root (it runs real studies in temporary folders and prints tables):

    python benchmarks/study_parallel.py                 # the shipped settings (several minutes per row)
    python benchmarks/study_parallel.py --quick         # smaller trials, same shape of result
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(study: str, folder: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(ROOT / study), *args], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    return time.perf_counter() - start


def epochs_trained(folder: Path, experiment: str) -> tuple[int, int, int]:
    """(trials finished, trials pruned, epochs actually trained) read back from the MLflow store."""
    import mlflow

    from ablate.tracking import Tag

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(Tag.ROLE) != "study"]
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val/acc1")) for r in children)
    return len(children), sum(r.info.status == "KILLED" for r in children), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small trials (train_size 600, 2 epochs, 8 trials)")
    parser.add_argument("--trials", type=int, default=None, help="attention_search trials (default: the study's)")
    args = parser.parse_args()
    size = ["data.train_size=600", "data.val_size=300", "train.epochs=2"] if args.quick else []
    search_trials = args.trials or (8 if args.quick else None)

    print("| study | jobs | wall s | speed-up |\n| --- | ---: | ---: | ---: |")
    walls = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            walls[jobs] = run("studies/cbam_vs_se.yaml", Path(tmp), "--jobs", str(jobs), *size)
        print(f"| cbam_vs_se (9 trials) | {jobs} | {walls[jobs]:.0f} | {walls[1] / walls[jobs]:.2f} |")

    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"--trials={search_trials}"] if search_trials else []
        wall = run("studies/attention_search.yaml", Path(tmp), *extra, *size)
        finished, pruned, epochs = epochs_trained(Path(tmp), "attention_search")
    import yaml

    search = yaml.safe_load((ROOT / "studies/attention_search.yaml").read_text())
    base_epochs = 2 if args.quick else search["base"]["train"]["epochs"]
    print("\n| attention_search (TPE + median pruning) | value |\n| --- | ---: |")
    print(f"| trials run | {finished} |\n| trials pruned | {pruned} |\n| epochs trained | {epochs} |")
    print(f"| epochs without pruning ({finished} trials x {base_epochs}) | {finished * base_epochs} |")
    print(f"| compute saved by pruning | {1 - epochs / max(1, finished * base_epochs):.0%} |\n| wall s | {wall:.0f} |")
    from ablate.spec import grid_cells, load_study

    search = load_study(ROOT / "studies/attention_search.yaml")
    search.space = {k: v for k, v in search.space.items() if isinstance(v, list)}  # a grid needs discrete keys
    cells = len(grid_cells(search))
    print(f"| a grid over the discrete keys: {cells} cells x {base_epochs} epochs | {cells * base_epochs} epochs |")


if __name__ == "__main__":
    main()
