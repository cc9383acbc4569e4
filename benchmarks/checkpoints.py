"""What durable trials cost and save: checkpoint overhead, checkpoint size, and the work a kill loses.

1. Overhead: the headline study's trial (studies/cbam_vs_se.yaml's base config, one cell, seed 0) with a
   checkpoint every epoch against no checkpoints, run alternately in this process; median wall time of each.
2. Size of one checkpoint (weights, optimizer state, EMA when on) for resnet10_narrow (the headline's) and
   timm's resnet50 with 1000 classes (the ImageNet tables'), after one training step.
3. Work lost by a kill: `ablate run` processes killed with SIGKILL at a uniformly random moment of their
   training; epochs lost = the epochs the killed run had trained (its record in MLflow, with the fraction of
   the epoch it was in) minus the epoch its checkpoint lets the next run resume at.

    PYTHONPATH=. python benchmarks/checkpoints.py                   # a few minutes on 2 cores
    PYTHONPATH=. python benchmarks/checkpoints.py --repeats 1 --kills 3   # a quick look
    PYTHONPATH=. python benchmarks/checkpoints.py --parts 3 --kills 10    # only the kills
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytorch_lightning as pl
import torch
import yaml

from ablate.checkpoint import CHECKPOINT
from ablate.config import TrialConfig
from ablate.spec import load_study, trial_config
from ablate.tracking import Tag
from ablate.train import run_trial

HEADLINE = Path(__file__).resolve().parents[1] / "studies" / "cbam_vs_se.yaml"


def headline_trial(folder: Path, every: int) -> TrialConfig:
    cfg = trial_config(load_study(HEADLINE), {"model.attention.name": "cbam"}, 0)
    return cfg.model_copy(update={
        "train": cfg.train.model_copy(update={"checkpoint_every": every, "progress_bar": False}),
        "tracking": cfg.tracking.model_copy(update={"uri": f"sqlite:///{folder / 'mlflow.db'}"})})


def overhead(repeats: int) -> None:
    times: dict[int, list[float]] = {1: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_trial(headline_trial(folder, 0))  # warm-up: imports, the store's tables, first-touch allocations
        for _ in range(repeats):
            for every in (1, 0):  # alternately, so that drifts in machine load hit both alike
                start = time.perf_counter()
                run_trial(headline_trial(folder, every), checkpoint=folder / "ck" / CHECKPOINT)
                times[every].append(time.perf_counter() - start)
    on, off = statistics.median(times[1]), statistics.median(times[0])
    epochs = headline_trial(Path("."), 1).train.epochs
    print(f"\n1. checkpoint overhead, headline trial (cbam, {epochs} epochs, {epochs - 1} checkpoints), "
          f"median of {repeats}")
    print(f"{'checkpoint_every':>17} | {'wall (s)':>8}\n{'-' * 17}-+-{'-' * 8}")
    print(f"{'0 (none)':>17} | {off:8.2f}\n{'1':>17} | {on:8.2f}")
    print(f"ratio: {on / off:.3f} (goal <= 1.05)")


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stop: the epoch-0 checkpoint is what we measure")


def sizes() -> None:
    print("\n2. checkpoint size (one file per trial; only the latest is kept)")
    print(f"{'backbone':>16} | {'classes':>7} | {'params (M)':>10} | {'EMA':>3} | {'checkpoint (MB)':>15}")
    print(f"{'-' * 16}-+-{'-' * 7}-+-{'-' * 10}-+-{'-' * 3}-+-{'-' * 15}")
    for backbone, classes in (("resnet10_narrow", 10), ("resnet50", 1000)):
        for ema in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrialConfig.model_validate({
                    "model": {"backbone": backbone},
                    "data": {"name": "synthetic", "image_size": 32, "batch_size": 2, "train_size": 2,
                             "val_size": 2, "num_classes": classes},
                    "train": {"epochs": 2, "progress_bar": False, "ema": ema},
                    "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "log_weights": False}})
                path = Path(tmp) / CHECKPOINT
                try:
                    run_trial(cfg, callbacks=[StopAfterFirstEpoch()], checkpoint=path)
                except RuntimeError:
                    pass
                params = sum(p.numel() for p in torch.load(path, weights_only=True)["state_dict"].values()) / 1e6
                print(f"{backbone:>16} | {classes:>7} | {params:10.2f} | {'on' if ema else 'off':>3} | "
                      f"{path.stat().st_size / 2**20:15.1f}")
    print("(params counted over the saved state dict: with EMA, the averaged copy doubles it; SGD momentum adds "
          "one buffer per weight outside it)")


def work_lost(kills: int, epochs: int) -> None:
    lost = []
    print(f"\n3. work lost by a SIGKILL at a random moment ({epochs}-epoch trial, checkpoint every epoch)")
    print(f"{'kill':>4} | {'killed at (s)':>13} | {'epochs trained':>14} | {'resumes at':>10} | {'epochs lost':>11}")
    print(f"{'-' * 4}-+-{'-' * 13}-+-{'-' * 14}-+-{'-' * 10}-+-{'-' * 11}")
    rng = random.Random(0)
    for k in range(kills):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            study = {"study": {"name": "lost", "seeds": [0]},
                     "base": {"model": {"backbone": "resnet10_narrow"},
                              "data": {"name": "cluttered-digits", "image_size": 32, "batch_size": 32,
                                       "train_size": 1500, "val_size": 200},
                              "train": {"epochs": epochs, "progress_bar": False}},
                     "space": {"model.attention.name": ["se"]}}
            (folder / "lost.yaml").write_text(yaml.safe_dump(study))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", "lost.yaml"], cwd=folder, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
            run = first_epoch_end = None
            while first_epoch_end is None:  # the trial's first epoch gives its epoch time
                time.sleep(0.2)
                run = run or _trial_run(client)
                history = client.get_metric_history(run.info.run_id, "train/epoch_time") if run else []
                first_epoch_end = history[0].timestamp / 1000 if history else None
            epoch_time = history[0].value
            # a moment anywhere in the remaining epochs but the last (which ends the trial)
            time.sleep(rng.uniform(0, (epochs - 2) * epoch_time))
            killed_at = time.time()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ends = sorted(m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "train/epoch_time"))
            # the wall time from one epoch's end to the next (logging and the checkpoint included)
            period = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else epoch_time
            trained = len(ends) + min(1.0, (killed_at - ends[-1]) / period)
            [ckpt] = (folder / "mlruns" / "checkpoints").rglob(CHECKPOINT)
            resumes_at = torch.load(ckpt, weights_only=True)["ablate"]["epoch"]
            lost.append(trained - resumes_at)
            print(f"{k + 1:>4} | {killed_at - first_epoch_end + epoch_time:13.1f} | {trained:14.2f} | "
                  f"{resumes_at:>10} | {lost[-1]:11.2f}")
    print(f"mean epochs lost: {statistics.mean(lost):.2f} (goal < 1; a uniformly random kill costs 0.5 on average)")


def _trial_run(client):
    experiment = client.get_experiment_by_name("lost")
    if experiment is None:
        return None
    found = [r for r in client.search_runs([experiment.experiment_id]) if Tag.TRIAL in r.data.tags]
    return found[0] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the killed trial")
    parser.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 3")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    "1" in parts and overhead(args.repeats)
    "2" in parts and sizes()
    "3" in parts and work_lost(args.kills, args.epochs)


if __name__ == "__main__":
    main()
