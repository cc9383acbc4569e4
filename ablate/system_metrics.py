"""MLflow's system metrics on a trial's run (tracking.system_metrics): CPU, memory, disk, network, and each NVIDIA
GPU's utilisation and memory where pynvml finds one, as `system/*` metrics (step = sample).

MLflow's own monitor (mlflow.system_metrics.SystemMetricsMonitor: a thread of psutil and pynvml reads) does the
sampling; $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides ablate's 10 s. Its thread publishes a sample one
interval after taking it and drops what it holds when the run ends, so a trial shorter than the interval would get
nothing and a longer one would lose its last stretch: at the end, the sample it still holds is published and one
more taken (CPU utilisation over the time since the last sample), so every trial's run has at least two steps.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ablate.tracking import SYSTEM

SAMPLE_EVERY_S = 10  # a sample is a few psutil/pynvml reads and one batched write: nothing a trial can measure
PREFIX = SYSTEM  # MLflow's names: system/cpu_utilization_percentage, system/gpu_0_memory_usage_megabytes, ...


@contextmanager
def system_metrics(run_id: str, uri: str, on: bool = True) -> Iterator[None]:
    """Sample the machine into the run while the block runs (the run must still be RUNNING when it ends)."""
    if not on:
        yield
        return
    log = logging.getLogger("mlflow.system_metrics")
    level = log.level
    log.setLevel(logging.WARNING)  # its start and stop lines at INFO would be printed for every trial
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLE_EVERY_S, tracking_uri=uri)
        monitor.start()
        try:
            yield
        finally:
            close(monitor)
    finally:
        log.setLevel(level)


def close(monitor: SystemMetricsMonitor) -> None:
    """Stop the thread, then publish what it still held and a last sample, and write them."""
    monitor.finish()
    if any(m.metrics for m in monitor.monitors):  # taken at the start of the interval the run ended in
        monitor.publish_metrics(monitor.aggregate_metrics())
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())
    monitor.mlflow_logger.flush()
