"""build_model(model config) -> a timm backbone with its attention injected, and what that cost."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from torch import nn

import ablate.backbones  # noqa: F401  (registers our small CPU backbones with timm before any lookup)
from ablate.blocks import dry_forward
from ablate.config import ModelConfig
from ablate.errors import AblateError, at, describe, one_line, path_kind, shown
from ablate.inject import InsertionReport, inject


@dataclass
class BuiltModel:
    model: nn.Module
    report: InsertionReport

    @property
    def params(self) -> int:
        return self.report.params

    @property
    def gmacs(self) -> float:
        return self.report.gmacs


def check_backbone(name: str) -> None:
    """An unkeyed AblateError unless timm knows `name`: the caller locates it (`at("model.backbone")`)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise AblateError(f"unknown timm backbone {name!r} ({hint})")


def create_backbone(cfg: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """timm.create_model, with weights from timm's hub or a local file (`model.checkpoint`).
    Errors are keyed relative to the model config ("checkpoint: ..."); the caller locates them."""
    with at("backbone"):
        check_backbone(cfg.backbone)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.checkpoint:
        check_weights(cfg.checkpoint)
        # timm loads the file like hub weights: adapts in_chans, drops a classifier of another size
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(Path(cfg.checkpoint).resolve())))
    else:
        kwargs["pretrained"] = cfg.pretrained
    try:
        return timm.create_model(cfg.backbone, **kwargs)
    except TypeError as e:  # e.g. drop_path_rate on a family that has no stochastic depth
        raise AblateError(f"{cfg.backbone} does not accept {e}") from None
    except (OSError, RuntimeError) as e:
        if cfg.pretrained and not cfg.checkpoint:
            raise AblateError(f"could not fetch {cfg.backbone} weights (offline?): set model.checkpoint to a "
                              f"local weights file", key="pretrained") from None
        if cfg.checkpoint:  # weights of another architecture: missing keys, shape mismatches
            raise AblateError(f"{cfg.checkpoint} does not fit {cfg.backbone} ({one_line(describe(e), 200)})",
                              key="checkpoint") from None
        raise


def check_weights(path: str) -> None:
    """A keyed AblateError unless `path` is a weights file timm can load (a state dict, saved by torch or as
    safetensors); memory-mapped, so a large file costs no memory."""
    with at("checkpoint"):
        kind = path_kind(path)  # a name too long, a loop of links: said as such
    if kind != "file":
        raise AblateError(f"no weights file at {shown(path)}{' (a folder)' if kind == 'folder' else ''}",
                          key="checkpoint")
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt"):  # reads the header: the weights stay on disk
                return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # torch's legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (pickle, zip and safetensors errors come in many types)
        raise AblateError(f"{path} is not a weights file torch can load ({one_line(describe(e), 160)})",
                          key="checkpoint") from None
    if not isinstance(state, dict):
        raise AblateError(f"{path} holds a {type(state).__name__}, not a state dict of weights", key="checkpoint")


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int, image_size: int,
                test_size: int | None = None) -> BuiltModel:
    """The backbone with its attention; errors are located in the trial config (model.backbone,
    model.attention.position, model.attention.knobs.reduction, ...). `test_size`: the side it is evaluated at
    (data.test_size), checked by a forward when it is not the side it is built for."""
    try:
        with at("model"):
            model = create_backbone(cfg, num_classes, in_chans)
            with at("attention"):
                report = inject(model, cfg.attention, in_chans=in_chans, image_size=image_size,
                                backbone=cfg.backbone)
    except (AssertionError, RuntimeError) as e:  # timm's input checks: a ViT's fixed size, a map shrunk to 0 px
        raise AblateError(f"{cfg.backbone} cannot run on {in_chans} x {image_size} x {image_size} inputs "
                          f"({one_line(describe(e), 200)})", key="data.image_size") from None
    if test_size is not None and test_size != image_size:
        check_evaluated_size(model, cfg, in_chans, image_size, test_size)
    return BuiltModel(model, report)


def check_evaluated_size(model: nn.Module, cfg: ModelConfig, in_chans: int, image_size: int, test_size: int) -> None:
    """One forward at the evaluated side, in eval mode: a model whose shapes are fixed at the side it was built for
    (a ViT, BoTNet's position embeddings) fails here, not after its first epoch of training."""
    try:
        dry_forward(model, in_chans, test_size)
    except (AssertionError, RuntimeError) as e:
        what = cfg.backbone if cfg.attention.name == "none" else f"{cfg.backbone} with {cfg.attention.name}"
        raise AblateError(f"{what}, built for {image_size} px inputs, cannot run on {test_size} px ones "
                          f"({one_line(describe(e), 200)}; test_size: null evaluates at data.image_size)",
                          key="data.test_size") from None
