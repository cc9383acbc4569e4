"""What a trial's MLflow records cost: system metrics on vs off, and the seconds the LoggedModel adds.

One trial of a study's base config (default the headline, studies/cbam_vs_se.yaml: resnet10_narrow on cluttered
digits, 5 epochs), with tracking.system_metrics true and false, interleaved (the order alternates each repeat) in
one process, into a temporary MLflow store; a warm-up trial first (imports, the store's tables). Printed: median
and fastest wall seconds and the process's CPU seconds of each, their ratio (on / off), and the system/* samples
the run got; and the CPU time of one sample (what the monitor's thread does every 10 s), which a loaded machine
does not blur. Then the LoggedModel: `logged_model.log_trial_model` of the trained network, its first call in a
process (MLflow scans the installed distributions once, to check the pinned requirements) and the median of the
calls after it: what every further trial of a worker pays.

    PYTHONPATH=. python benchmarks/system_metrics.py                    # 3 repeats of each, ~20 s a trial idle
    PYTHONPATH=. python benchmarks/system_metrics.py --repeats 5 --attention cbam
    PYTHONPATH=. python benchmarks/system_metrics.py --epochs 1 --repeats 1    # a quick look
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ablate import tracking
from ablate.config import flatten
from ablate.data import build_datamodule
from ablate.logged_model import log_trial_model, signature
from ablate.models import build_model
from ablate.spec import load_study, trial_config
from ablate.system_metrics import SAMPLE_EVERY_S
from ablate.train import run_trial

REPO = Path(__file__).resolve().parents[1]


def one_trial(cfg, on: bool) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, system/* samples logged) of one trial."""
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.system_metrics = on
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_trial(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    client = tracking.make_client(cfg.tracking.uri)
    samples = len(client.get_metric_history(result.run_id, "system/cpu_utilization_percentage"))
    return wall, cpu, samples


def sample_cost(uri: str, samples: int = 20) -> float:
    """CPU seconds of one sample as the monitor's thread takes and writes it (psutil and pynvml reads, one batched
    write to the store): its share of a core is this over the sampling interval, whatever else loads the machine."""
    client = tracking.make_client(uri)
    run_id = tracking.start_run(client, tracking.get_or_create_experiment(client, "sample-cost"))
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLE_EVERY_S, tracking_uri=uri)
    cpu = time.thread_time()  # the monitor's work runs in its own thread during a trial; here in this one
    for _ in range(samples):
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    return (time.thread_time() - cpu) / samples


def model_cost(cfg, calls: int) -> tuple[float, list[float]]:
    """Seconds of log_trial_model on the config's network: the first call, then each later one."""
    data = build_datamodule(cfg.data)
    model = build_model(cfg.model, data.num_classes, data.in_chans, data.image_size).model
    client = tracking.make_client(cfg.tracking.uri)
    run_id = tracking.start_run(client, tracking.get_or_create_experiment(client, "model-cost"))
    tracking.log_params(client, run_id, flatten(cfg))
    sig = signature(data.in_chans, data.image_size, data.num_classes)
    times = []
    for _ in range(calls + 1):
        t = time.perf_counter()
        log_trial_model(client, run_id, model, sig, cfg.train.epochs - 1)
        times.append(time.perf_counter() - t)
    return times[0], times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(REPO / "studies" / "cbam_vs_se.yaml"))
    parser.add_argument("--attention", default="none", help="model.attention.name of the trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: the study's")
    parser.add_argument("--model-calls", type=int, default=5, help="log_trial_model calls after the first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = trial_config(load_study(args.study), {"model.attention.name": args.attention}, 0)
        cfg.train.progress_bar = False
        if args.epochs:
            cfg.train.epochs = args.epochs
        cfg.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
        cfg.tracking.log_weights = False  # the trials measure system metrics alone; the model is timed below
        cfg.train.checkpoint_dir = f"{tmp}/checkpoints"
        warm = cfg.model_copy(deep=True)
        warm.train.epochs, warm.train.limit_train_batches, warm.train.limit_val_batches = 1, 2, 2
        run_trial(warm)
        measured: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
        for r in range(args.repeats):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                measured[on].append(one_trial(cfg, on))
                print(f"repeat {r + 1}/{args.repeats}, system metrics {'on' if on else 'off'}: "
                      f"{measured[on][-1][0]:.1f} s", flush=True)
        first, later = model_cost(cfg, args.model_calls)
        per_sample = sample_cost(cfg.tracking.uri)

    def median(on, i):
        return statistics.median(m[i] for m in measured[on])

    print(f"\n{cfg.model.backbone} + {args.attention}, {cfg.data.name}, {cfg.train.epochs} epochs, "
          f"{args.repeats} trial(s) each, interleaved")
    print(f"{'system metrics':<16}{'wall s (median)':>17}{'fastest':>10}{'CPU s':>9}{'samples':>9}")
    for on in (False, True):
        print(f"{'on' if on else 'off':<16}{median(on, 0):>17.2f}{min(m[0] for m in measured[on]):>10.2f}"
              f"{median(on, 1):>9.2f}{median(on, 2):>9.0f}")
    print(f"{'ratio on/off':<16}{median(True, 0) / median(False, 0):>17.3f}"
          f"{min(m[0] for m in measured[True]) / min(m[0] for m in measured[False]):>10.3f}"
          f"{median(True, 1) / median(False, 1):>9.3f}")
    print(f"\none sample: {per_sample * 1000:.1f} ms of CPU (collect + write), every {SAMPLE_EVERY_S} s: "
          f"{100 * per_sample / SAMPLE_EVERY_S:.3f}% of one core")
    print(f"\nLoggedModel (log_trial_model): first call in the process {first:.2f} s, then median "
          f"{statistics.median(later):.2f} s over {len(later)} (min {min(later):.2f}, max {max(later):.2f})")


if __name__ == "__main__":
    main()
