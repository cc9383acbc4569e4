"""Classifier-head surgery: a head-kind module in the place of timm's global pool.

A head module that ends in its own features (`out_features`) owns the classifier, which timm's
reset_classifier rebuilds to take them. The installer in inject.py (INSTALLERS["pool"]) calls `replace_pool`.
"""
from __future__ import annotations

import inspect

from torch import nn

from ablate.cost import count_params
from ablate.errors import AblateError


def replace_pool(model: nn.Module, path: str, attn: nn.Module, owner: str) -> int:
    """Put head module `attn` (of attention `owner`) in the global pool's place at `path`; return the
    parameters added: new head (+ classifier) - replaced pool (+ classifier)."""
    before = count_params(model)
    out_features = getattr(attn, "out_features", None)
    if out_features is not None:
        reset_classifier(model, out_features, owner)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model  # after the reset: it may rebuild it
    old_pool = getattr(parent, attr)
    setattr(parent, attr, HeadPool(attn, flatten=getattr(old_pool, "flatten", None)))
    return count_params(model) - before


def reset_classifier(model: nn.Module, in_features: int, owner: str) -> None:
    """Rebuild the model's classifier (same classes) to take `in_features`, through timm's reset_classifier;
    `owner` is the head module asking.

    timm sizes the new classifier from `model.num_features`, so it is set for the call and restored after.
    reset_classifier may rebuild global_pool too (ResNet), so it runs before the head is installed; a head
    norm between pool and classifier (ConvNeXt's NormMlpClassifierHead) is dropped (`reset_other`): such a
    head normalises its own output.
    """
    reset = getattr(model, "reset_classifier", None)
    num_features = getattr(model, "num_features", None)
    name = type(model).__name__
    if reset is None or num_features is None:
        raise AblateError(f"{owner} owns the classifier, but {name} has no timm reset_classifier", key="name")
    kwargs = {"reset_other": True} if "reset_other" in inspect.signature(reset).parameters else {}
    model.num_features = in_features
    try:
        reset(model.num_classes, **kwargs)
    except AssertionError as e:
        raise AblateError(f"{owner} owns the classifier, but {name}'s head cannot take {in_features} "
                          f"features ({e})", key="name") from None
    finally:
        model.num_features = num_features
    classifier = model.get_classifier()
    width = getattr(classifier, "in_features", in_features)
    if not isinstance(classifier, nn.Identity) and width != in_features:
        raise AblateError(f"{owner} owns the classifier, but {name}'s classifier still takes {width} "
                          f"features, not {in_features}", key="name")


class HeadPool(nn.Module):
    """A head-kind module in place of timm's global pool, keeping the pool's output layout."""

    def __init__(self, attn: nn.Module, flatten):
        super().__init__()
        self.attn = attn
        is_module = isinstance(flatten, nn.Module)
        self.flatten = bool(flatten) if not is_module else not isinstance(flatten, nn.Identity)

    def is_identity(self) -> bool:  # timm's SelectAdaptivePool API, which some heads ask (LowFormer)
        return False

    def forward(self, x):
        pooled = self.attn(x)
        return pooled if self.flatten else pooled[:, :, None, None]
