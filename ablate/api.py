"""The notebook API's model side, in timm's manner: build a backbone with a module, put a module into a model one
already has, list the modules and positions. `ablate/__init__.py` re-exports these names (loading this file, and
torch with it, on first use); errors are AblateErrors naming the function and the argument, as the CLI's name the
flag: `create_model: knobs.reduction: se.reduction=0 is out of range (int in [1, channels])`."""
from __future__ import annotations

import fnmatch
from typing import Any

import timm
from pydantic import ValidationError
from torch import nn

from ablate.attention import get_attention, list_attention
from ablate.config import POSITION_NAMES, AttentionSpec, validation_error
from ablate.errors import AblateError, at, within
from ablate.inject import InsertionReport, inject
from ablate.models import check_backbone


def list_modules(filter: str = "", kind: str | None = None) -> list[str]:  # `filter`: timm.list_models' word
    """The registered attention modules' names (ablate's own and plugins'), sorted; `filter` a glob as in
    `timm.list_models("*se*")`, `kind` one of gate, conv, head (what `ablate modules` lists, with their knobs)."""
    if kind not in (None, "gate", "conv", "head"):
        raise AblateError(f"list_modules: kind: {kind!r} is not allowed (gate, conv, head)")
    return [i.name for i in list_attention(kind) if not filter or fnmatch.fnmatch(i.name, filter)]


def list_positions() -> list[str]:
    """Where a module can go (docs/modules.md's Positions table): block, block_out, branch_in, shortcut, stage, stem,
    head, conv, pattern."""
    return list(POSITION_NAMES)


def _spec(caller: str, attention: str, position, stages, every, pattern, init, knobs) -> AttentionSpec:
    try:
        spec = AttentionSpec(name=attention, position=position, stages=stages, every=every, pattern=pattern,
                             init=init, knobs=dict(knobs or {}))
    except ValidationError as e:
        raise validation_error(caller, e, AttentionSpec) from None
    if attention != "none":  # named here as the argument, before timm builds anything
        with within(caller), at("attention"):
            get_attention(attention)
    return spec


def _in_chans(model: nn.Module) -> int:
    """The input channels the model takes: its first conv's (3 for a model without one)."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)


def inject_attention(model: nn.Module, attention: str, *, position: str | None = None,
                     stages: list[int] | None = None, every: int = 1, pattern: str | None = None,
                     init: str = "default", knobs: dict[str, Any] | None = None, image_size: int = 224,
                     in_chans: int | None = None) -> InsertionReport:
    """Put `attention` into a timm `model` in place, as a study's `model.attention` would; return the insertion
    report (`print(report.to_text())` is `ablate inspect`'s output; `.rows` where each module went).

    position: one of list_positions(); None is where the module's paper puts it. stages: 1-based, as papers
    count; every: every n-th block of a stage; pattern: the module-path glob of position="pattern"; init:
    "identity" starts each gate as the identity (a pretrained model's output unchanged); knobs: the module's
    constructor arguments beyond its channels (`ablate modules` lists them with the paper's defaults).
    image_size and in_chans (default: the model's first conv's) are the dry forward's input, which gives each
    site its channels and feature size."""
    spec = _spec("inject_attention", attention, position, stages, every, pattern, init, knobs)
    backbone = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or ""
    with within("inject_attention"):
        return inject(model, spec, in_chans=in_chans or _in_chans(model), image_size=image_size, backbone=backbone)


def create_model(model_name: str, attention: str = "none", *, position: str | None = None,
                 stages: list[int] | None = None, every: int = 1, pattern: str | None = None, init: str = "default",
                 knobs: dict[str, Any] | None = None, image_size: int = 224, **kwargs) -> nn.Module:
    """`timm.create_model(model_name, **kwargs)` with `attention` injected (inject_attention's arguments), e.g.
    `create_model("resnet50", "cbam", position="block", knobs={"reduction": 8}, num_classes=10)`. Every other
    keyword (num_classes, in_chans, pretrained, drop_path_rate, ...) is timm's. ablate's CPU backbones
    (resnet10_narrow, the CIFAR ResNets) are registered with timm."""
    spec = _spec("create_model", attention, position, stages, every, pattern, init, knobs)
    with within("create_model"), at("model_name"):
        check_backbone(model_name)
    model = timm.create_model(model_name, **kwargs)
    with within("create_model"):
        inject(model, spec, in_chans=kwargs.get("in_chans", 3), image_size=image_size, backbone=model_name)
    return model
