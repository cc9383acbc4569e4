"""The final score: a trial's evaluated weights (the EMA's when val/* measure them), once training ends, over the
split its table reports (the dataset's own val/test split), in a plain no-grad loop in eval mode.

It gives each image's top-1 correctness in the split's fixed order (packed by correct.py, for the images' sampling
error in an interval) and, with a data.holdout, the test/* metrics (validation then measured the holdout).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FinalScore", "score_split", "batches_scored"]


@dataclass
class FinalScore:
    correct: np.ndarray  # each image's top-1 correctness, in the split's order
    acc1: float
    acc5: float | None  # None for 5 or fewer classes (top-5 of 5 is always 1)
    loss: float  # mean cross-entropy

    def metrics(self, prefix: str) -> dict[str, float]:
        """The scores under `prefix` ('test/'), as a trial logs them."""
        values = {"acc1": self.acc1, "acc5": self.acc5, "loss": self.loss}
        return {prefix + name: v for name, v in values.items() if v is not None}


def batches_scored(available: int, limit: int | float | None) -> int:
    """How many of `available` batches an evaluation takes under train.limit_val_batches, as Lightning counts."""
    if limit is None:
        return available
    return min(available, limit) if isinstance(limit, int) else int(available * limit)


@torch.no_grad()
def score_split(model: torch.nn.Module, logits_of: Callable, batches: Sized, transform: Callable, device: torch.device,
                num_classes: int, limit: int | float | None = None,
                precision: AbstractContextManager | None = None) -> FinalScore:
    """Score `model` (the LightningModule that holds the weights) on `batches` moved to `device` and passed through
    `transform` (the datamodule's transform_batch for evaluation); `logits_of(x)` is the evaluated weights' output.
    `limit`: the train.limit_val_batches validation took; `precision`: Lightning's evaluation autocast."""
    home, was_training = next(model.parameters()).device, model.training
    model.to(device).eval()  # Lightning hands the model back on the CPU once fit ends
    right, top5, loss = [], 0, 0.0
    try:
        with precision or nullcontext():
            for batch in itertools.islice(batches, batches_scored(len(batches), limit)):
                x, y = transform([t.to(device) for t in batch], train=False)
                logits = logits_of(x).float()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                right.append((logits.argmax(-1) == y).cpu())
                top5 += int((logits.topk(min(5, num_classes), -1).indices == y[:, None]).any(-1).sum())
    finally:
        model.to(home).train(was_training)
    correct = torch.cat(right).numpy() if right else np.zeros(0, dtype=bool)
    n = max(len(correct), 1)
    return FinalScore(correct, float(correct.sum()) / n, top5 / n if num_classes > 5 else None, loss / n)
