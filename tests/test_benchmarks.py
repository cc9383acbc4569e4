"""The hand-run benchmarks still run: `benchmarks/gpu_throughput.py --quick` prints its table (no timings checked)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_throughput_quick_prints_a_row_per_attention_module(tmp_path):
    # --device cpu: the CPU-sized run on any machine (on a GPU --quick would compile its models too); one workload
    # of 2 batches (the cifar one is the same code over resnet18: two minutes of CI on 2 cores)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--quick", "--device", "cpu",
               "--workloads", "imagenet", "--imagenet-batches", "2", "--repeats", "1"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if "ablate img/s" in line), None)
    assert header is not None, proc.stdout
    assert lines[header].split() == ["workload", "attention", "mode", "ablate", "img/s", "plain", "img/s", "ratio",
                                     "host", "ms/step", "ratios"]
    rows = [line.split() for line in lines[header + 1:] if line.strip()]
    for name in ("none", "se", "cbam"):
        assert any(name in row and "eager" in row for row in rows), proc.stdout
    assert "skipped" in proc.stdout  # the compiled rows on CPU, said so
    assert not list(tmp_path.iterdir())  # its MLflow store is a temporary folder, not ./mlruns


def test_cifar_resident_quick_prints_resident_beside_host(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifar_resident.py"), "--images", "128",
                           "--batch-size", "64", "--epochs", "1", "--threads", "1", "--accelerator", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split() == ["path", "img/s", "vs", "host"]), None)
    assert header is not None, proc.stdout
    rows = {row.split()[0]: row.split() for row in lines[header + 1:] if row.strip()}
    assert set(rows) == {"resident", "host"} and float(rows["host"][2]) == 1.0
    assert float(rows["resident"][1].replace(",", "")) > 0
    assert not list(tmp_path.iterdir())  # the data is a temporary folder; no logs or checkpoints are left behind
