"""The training criterion: train.loss names a builder in LOSSES, each timm's loss composed as timm's train.py does.

timm folds label smoothing into mixup's soft targets, so with mixup/cutmix the criterion takes those targets as they
come (SoftTargetCrossEntropy, or BinaryCrossEntropy on them); without, it smooths the one-hot targets itself.
`bce` is BinaryCrossEntropy in every case, also without smoothing or mixup (where timm's train.py, given
--bce-loss, silently trains cross-entropy): the key says which loss trains. Validation never uses it: val/loss and
test/loss are cross-entropy on the evaluated logits whatever trains (timm's validate_loss_fn), so val/loss stays
comparable across a study's train.loss.
"""
from __future__ import annotations

from collections.abc import Callable

from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from ablate.config import TrainConfig

__all__ = ["LOSSES", "training_criterion"]


def _cross_entropy(cfg: TrainConfig, soft_targets: bool) -> nn.Module:
    if soft_targets:  # mixup's targets already carry the smoothing
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else nn.CrossEntropyLoss()


def _binary_cross_entropy(cfg: TrainConfig, soft_targets: bool) -> nn.Module:
    # smoothing given explicitly (timm's default is 0.1); on mixup's dense targets timm applies none of its own
    return BinaryCrossEntropy(smoothing=cfg.label_smoothing, target_threshold=cfg.bce_target_threshold)


# train.loss -> builder(cfg, soft_targets): soft_targets when mixup/cutmix hand the criterion class probabilities
LOSSES: dict[str, Callable[[TrainConfig, bool], nn.Module]] = {
    "ce": _cross_entropy,
    "bce": _binary_cross_entropy,
}


def training_criterion(cfg: TrainConfig, soft_targets: bool) -> nn.Module:
    """The loss a trial trains on: train.loss's builder, given whether mixup/cutmix make the targets soft."""
    return LOSSES[cfg.loss](cfg, soft_targets)
