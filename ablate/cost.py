"""Cost of a model: parameters and GMACs (torch's flop counter), throughput for benchmarks."""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, input_size: tuple[int, ...]) -> tuple[float, dict[str, float]]:
    """Total GMACs of one forward at batch 1 and GMACs per module path ('' is the root).

    torch counts matmul/conv/attention FLOPs (2 per MAC) and not elementwise ops, the usual
    convention of papers' GFLOPs columns (which are really GMACs).
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    root = type(model).__name__
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key.removeprefix(root + ".")
        per_module[path] = sum(ops.values()) / 2e9
    return counter.get_total_flops() / 2e9, per_module


def train_step_seconds(model: nn.Module, batch: torch.Tensor, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of forward + backward (benchmarks only, never asserted in tests)."""
    model.train()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(batch).float().sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]
